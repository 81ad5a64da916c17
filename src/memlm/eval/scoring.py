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


# The model speaking as if it were the user ("I'm a sommelier", "My dog is called Biscuit") or about
# the user in the third person ("The user's dog ..."): not a reply addressed to the user.
_AS_THE_USER = re.compile(r"\b(?:my|mine|i'm|i am|i've|i have|i live|i work|i play|i love|i like|i drive|i speak|"
                          r"i grow|i support|i was born|i always|i could|i do|i go|i moved)\b", re.IGNORECASE)
_THIRD_PERSON_USER = re.compile(r"\b(?:the user|user's)\b", re.IGNORECASE)


def recites(output: str, fact: str, question: str = "") -> bool:
    """Whether `output` repeats `fact`: at least two of the fact's content words (stemmed, not in the
    question) and at least 60% of them appear in it.

    >>> recites("You went to a small school, taught in English.", "I went to a really small school.")
    True
    """
    from memlm.facts.lexical import tokenize

    words = set(tokenize(fact)) - set(tokenize(question))
    if len(words) < 2:
        return False
    return len(words & set(tokenize(output))) >= max(2, 0.6 * len(words))


def clean_reply(output: str, answer: str, others: Iterable[str] = (), retrieved: Iterable[str] = (),
                question: str = "") -> bool:
    """A reply a user would be glad to get: it contains `answer`, is addressed to the user (not "the
    user ...", not the model claiming the user's facts as its own: "I'm a sommelier"), and recites
    neither any of `others` (the user's other facts' answers) nor any `retrieved` fact that does not
    hold the answer (`recites`).

    >>> clean_reply("Your favourite colour is teal.", "teal", ["Biscuit"])
    True
    >>> clean_reply("The user's favourite colour is teal.", "teal"), clean_reply("I love teal.", "teal")
    (False, False)
    >>> clean_reply("Teal, and your dog is Biscuit.", "teal", ["Biscuit"])
    False
    """
    if not contains(output, answer) or _THIRD_PERSON_USER.search(output) or _AS_THE_USER.search(output):
        return False
    if any(contains(output, other) for other in others if other.strip()):
        return False
    return not any(recites(output, fact, question) for fact in retrieved if not contains(fact, answer))
