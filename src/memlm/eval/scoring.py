"""Answer scoring for generated tasks: BABILong's first-sentence rule, word containment, exact match.

Example:
    >>> babilong_correct("The football is in the garden. Then John left.", "garden")
    True
    >>> contains("He is a gardener.", "garden")
    False
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
# A full stop inside a number ("3.5") or a word ("e.g") does not end a sentence; one before a space does.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace (SQuAD-style).

    >>> normalize("  The Garden!  ")
    'garden'
    """
    text = _PUNCTUATION.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_sentence(text: str) -> str:
    """`text` up to its first sentence end (., !, ? or a newline), stripped; "" for empty text.

    >>> first_sentence("\\nKitchen. Then the garden.")
    'Kitchen'
    """
    text = text.strip()
    match = _SENTENCE_END.search(text)
    return (text[: match.start()] if match else text).strip()


def contains(output: str, answer: str) -> bool:
    """Whether `answer` occurs in `output` as whole words, case-insensitively.

    >>> contains("It is in the Kitchen now", "kitchen"), contains("kitchens", "kitchen")
    (True, False)
    """
    answer = answer.strip()
    if not answer:
        return False
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", output, flags=re.IGNORECASE) is not None


def exact_match(output: str, answer: str) -> bool:
    """Whether `output` and `answer` are equal after `normalize`.

    >>> exact_match("The garden.", "garden")
    True
    """
    return normalize(output) == normalize(answer)


def babilong_correct(output: str, answer: str, labels: Iterable[str] = (), question: str = "") -> bool:
    """BABILong's rule: `answer` appears as a word in the first sentence of `output`.

    With `labels` (the task's possible answers, e.g. `babilong.LABELS[task]`), the first sentence must
    also name no other label except those the question itself mentions, as BABILong's own scorer does,
    so that hedged outputs listing several candidates do not count.

    >>> babilong_correct("Mary is in the kitchen or the garden.", "kitchen")
    True
    >>> babilong_correct("Mary is in the kitchen or the garden.", "kitchen", labels=["kitchen", "garden"])
    False
    """
    sentence = first_sentence(output)
    if not contains(sentence, answer):
        return False
    others = {label.lower() for label in labels if contains(sentence, label) and not contains(question, label)}
    return others <= {answer.strip().lower()}


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound at 0% and 100%, unlike mean ± 2 SE).

    >>> [round(x, 3) for x in wilson_interval(95, 100)]
    [0.888, 0.978]
    """
    if trials <= 0:
        return (0.0, 1.0)
    proportion = successes / trials
    denominator = 1 + z * z / trials
    centre = (proportion + z * z / (2 * trials)) / denominator
    half = z * ((proportion * (1 - proportion) / trials + z * z / (4 * trials * trials)) ** 0.5) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))
