"""Which parts of a chat message are facts worth remembering, and how to phrase them.

Rules do the bulk of the work, with no model call (a turn is memorised in milliseconds): a sentence
is kept when it is a first-person statement ("my ...", "I live ...", "we have ...", "remember that
...") and not a question or small talk. The rules keep more than they should rather than less:
ranking at retrieval time sorts the useful facts from the chatter. Kept sentences are rewritten from
the user's point of view into the third person ("My dog is Rex." -> "The user's dog is Rex."), so a
fact placed in a prompt later cannot be mistaken for something the assistant said about itself. A
`judge` (e.g. `model_judge`, which asks the language model) may rescue sentences the rules miss.

Example:
    >>> [f.text for f in extract_facts("Hi! My name is Ada. What's the weather like?")]
    ["The user's name is Ada."]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
# A first-person statement: the speaker talks about themselves (or their household).
_FIRST_PERSON = re.compile(r"\b(i|i'm|im|i've|ive|i'd|i'll|my|mine|me|myself|we|we're|we've|our|ours|call me|"
                           r"remember that|remember:|note that)\b", re.IGNORECASE)
_CHATTER = re.compile(r"^(hi|hello|hey|thanks|thank you|ok|okay|sure|yes|no|bye|goodbye)\b[\s!.,]*$", re.IGNORECASE)
_LEADING = re.compile(r"^(?:(?:hi|hello|hey|well|so|oh|also|and|btw|by the way|anyway)\b[,!.\s]*)+", re.IGNORECASE)
_REMEMBER = re.compile(r"^(?:please\s+)?(?:remember|note)(?:\s+that|:)?\s+", re.IGNORECASE)
# A request to the assistant ("Tell me about my bees.", "Please help me plan my trip to Rome", "Can
# you ...") asks for something; it states nothing the user wants remembered, and rewriting it in the
# third person yields nonsense ("Tell the user abouts the user's bees.").
_REQUEST = re.compile(
    r"^(?:please\b|pls\b|kindly\b|(?:can|could|would|will)\s+you\b|i(?:\s+(?:want|need|would\s+like)|'d\s+like)\s+you\s+to\b|"
    r"let\s+me\s+know\b|(?:tell|show|give|help|find|explain|recommend|suggest|write|make|create|plan|list|describe|"
    r"remind|teach|send|book|check|draft|summari[sz]e|translate|compare|calculate|search|look\s+up|generate|"
    r"answer|ask|fix|debug|rewrite|edit)\b)", re.IGNORECASE)

# Ordered: longer phrases first so "I'm" is not rewritten as "I" + "'m".
_THIRD_PERSON = [
    (r"\bI am\b", "the user is"), (r"\bI'm\b", "the user is"), (r"\bim\b", "the user is"),
    (r"\bI've\b", "the user has"),
    (r"\bI'll\b", "the user will"), (r"\bI'd\b", "the user would"), (r"\bI was\b", "the user was"),
    (r"\bI have\b", "the user has"), (r"\bI do not\b", "the user does not"), (r"\bI don't\b", "the user doesn't"),
    (r"\bI\b", "the user"), (r"\bmy\b", "the user's"), (r"\bmine\b", "the user's"), (r"\bme\b", "the user"),
    (r"\bmyself\b", "the user"), (r"\bour\b", "the user's"), (r"\bwe have\b", "the user has"),
    (r"\bwe are\b", "the user is"), (r"\bwe\b", "the user"), (r"\bus\b", "the user"),
]
# After "the user", a verb in the first-person form gets its third-person ending ("the user love" ->
# "the user loves"); words that need none (modals, past tenses, adverbs) are left alone.
_AFTER_SUBJECT = re.compile(r"\bthe user ((?:really|also|just|never|always|usually|often|still|actually|"
                            r"sometimes|mostly|only) )?([a-z]+)\b")
_NO_ENDING = {"is", "was", "has", "does", "doesn't", "can", "could", "will", "would", "should", "must", "might",
              "may", "shall", "did", "had", "were", "are", "and", "or", "but", "to", "in", "at", "on", "for",
              "with", "who", "that", "the", "a", "an", "as", "of", "by", "from", "too", "so", "not",
              # prepositions and adverbs that can follow the subject ("... the user about", "the user now")
              "about", "into", "onto", "through", "over", "under", "after", "before", "up", "out", "off",
              "around", "down", "back", "again", "here", "there", "then", "now", "when", "if", "because",
              "yet", "already", "even", "ever", "once", "twice", "than", "himself", "herself", "themselves"}
# Irregular past tenses: already right after "the user" ("I told ..." -> "the user told", not "tolds").
_NO_ENDING |= {"told", "said", "went", "got", "made", "took", "saw", "came", "gave", "found", "thought", "knew",
                "bought", "brought", "felt", "left", "met", "ran", "began", "wrote", "ate", "drank", "sang",
                "swam", "won", "lost", "kept", "built", "sent", "spent", "paid", "heard", "held", "sold", "taught",
                "caught", "fought", "slept", "stood", "understood", "forgot", "broke", "chose", "drove", "flew",
                "grew", "threw", "wore", "became", "sat", "fell", "hid", "rode", "rose", "shook", "spoke", "stole",
                "woke"}
_IRREGULAR = {"have": "has", "do": "does", "go": "goes", "am": "is", "are": "is", "were": "was"}
_BASE = {"has": "have", "does": "do", "is": "are", "was": "were"}  # "the user always has" -> "you always have"
# Verbs that end in -ing themselves (a gerund right after the subject keeps its form; these do not).
_ING_VERBS = {"sing", "bring", "ring", "swing", "sting", "string", "cling", "fling", "wring", "spring"}


def _third_person_verb(match: re.Match[str]) -> str:
    adverb, word = match.group(1) or "", match.group(2)
    if word in _IRREGULAR:
        verb = _IRREGULAR[word]
    elif word in _NO_ENDING or word.endswith(("ed", "s")) or (word.endswith("ing") and word not in _ING_VERBS):
        verb = word
    elif word.endswith(("sh", "ch", "x", "z", "o")):
        verb = word + "es"
    elif word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        verb = word[:-1] + "ies"
    else:
        verb = word + "s"
    return f"the user {adverb}{verb}"


CATEGORIES = {
    "identity": r"\b(name|call me|years old|age|born|birthday)\b",
    "location": r"\b(live|lived|living|moved|from|city|town|country|grew up)\b",
    "work": r"\b(work|job|engineer|teacher|doctor|nurse|student|study|studied|company|office|career)\b",
    "preference": r"\b(like|love|hate|prefer|favou?rite|enjoy|can't stand|allergic)\b",
    "family": r"\b(wife|husband|son|daughter|mother|father|mom|dad|sister|brother|kids?|children|partner)\b",
    "pet": r"\b(dog|cat|pet|parrot|hamster|fish|rabbit)\b",
}


@dataclass(frozen=True)
class ExtractedFact:
    text: str  # third-person fact
    category: str
    sentence: str  # the sentence as the user wrote it


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCES.split(text) if part and part.strip()]


def third_person(sentence: str) -> str:
    """Rewrite a user's first-person sentence about themselves in the third person."""
    text = sentence.strip()
    for pattern, replacement in _THIRD_PERSON:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    text = _AFTER_SUBJECT.sub(_third_person_verb, text)
    text = text[0].upper() + text[1:] if text else text
    return text if text.endswith((".", "!")) else text + "."


def categorize(sentence: str) -> str:
    for category, pattern in CATEGORIES.items():
        if re.search(pattern, sentence, re.IGNORECASE):
            return category
    return "other"


def is_request(sentence: str) -> bool:
    """Whether a sentence asks the assistant to do something ("Tell me about ...", "Can you ...")."""
    return bool(_REQUEST.match(_LEADING.sub("", sentence).strip()))


def extract_facts(text: str, judge: Callable[[str], bool] | None = None,
                  keep_statements: bool = False) -> list[ExtractedFact]:
    """Facts stated by the user in `text`, rewritten in the third person.

    Questions, small talk and requests to the assistant are never facts. With `keep_statements`,
    a statement about anything else is kept too, as it was written ("Ticket 42: the printer on floor
    3 is on fire."): memories of an agent or a run are about the world, not about a user.
    """
    facts = []
    for sentence in split_sentences(text):
        cleaned = _REMEMBER.sub("", _LEADING.sub("", sentence)).strip()
        if len(cleaned) < 4 or cleaned.endswith("?") or _CHATTER.match(cleaned):
            continue
        explicit = cleaned != _LEADING.sub("", sentence).strip()  # "remember that ..." is always kept
        if not explicit and is_request(cleaned):
            continue
        if explicit or _FIRST_PERSON.search(cleaned) or (judge is not None and judge(cleaned)):
            facts.append(ExtractedFact(third_person(cleaned), categorize(cleaned), sentence))
        elif keep_statements:
            statement = cleaned if cleaned.endswith((".", "!")) else cleaned + "."
            facts.append(ExtractedFact(statement[0].upper() + statement[1:], categorize(cleaned), sentence))
    return facts


def model_judge(model: Any, tokenizer: Any) -> Callable[[str], bool]:
    """A judge that asks the language model whether a sentence states a lasting fact about the user.

    One forward pass per sentence: compares the next-token probability of "yes" and "no".
    """
    import torch  # here, not at the top: the fact package runs without torch

    yes_id = tokenizer.encode(" yes", add_special_tokens=False)[-1]
    no_id = tokenizer.encode(" no", add_special_tokens=False)[-1]

    @torch.no_grad()
    def judge(sentence: str) -> bool:
        prompt = (f"Message: \"{sentence}\"\nDoes this message state a lasting fact about the speaker "
                  f"(name, home, job, family, likes, plans)? Answer yes or no.\nAnswer:")
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
        logits = model(input_ids=ids).logits[0, -1]
        return bool(logits[yes_id] > logits[no_id])

    return judge


# --- the second person: how facts about the user are put to the model, and so to the user --------
_TO_SECOND = [
    (r"\bI am\b", "you are"), (r"\bI'm\b", "you're"), (r"\bim\b", "you're"), (r"\bI was\b", "you were"),
    (r"\bI've\b", "you've"), (r"\bI'd\b", "you'd"), (r"\bI'll\b", "you'll"), (r"\bI\b", "you"),
    (r"\bmy\b", "your"), (r"\bmine\b", "yours"), (r"\bmyself\b", "yourself"), (r"\bme\b", "you"),
    (r"\bwe're\b", "you're"), (r"\bwe've\b", "you've"), (r"\bwe\b", "you"), (r"\bour\b", "your"),
    (r"\bours\b", "yours"), (r"\bus\b", "you"),
]
_THIRD_TO_SECOND = [
    (r"\bthe user's\b", "your"), (r"\bthe user is\b", "you are"), (r"\bthe user was\b", "you were"),
    (r"\bthe user has\b", "you have"), (r"\bthe user does\b", "you do"), (r"\bthe user doesn't\b", "you don't"),
    (r"\bthe user does not\b", "you do not"),
]
_THIRD_VERB = re.compile(r"\bthe user ((?:really|also|just|never|always|usually|often|still|actually|sometimes|"
                         r"mostly|only) )?([a-z]+)\b", re.IGNORECASE)


def _base_verb(match: re.Match[str]) -> str:
    adverb, verb = match.group(1) or "", match.group(2)
    lowered = verb.lower()
    if lowered in _BASE:
        base = _BASE[lowered]
    elif lowered in _NO_ENDING or lowered.endswith(("ed", "ing")) or not lowered.endswith("s"):
        base = verb
    elif lowered.endswith("ies") and len(lowered) > 4:
        base = verb[:-3] + "y"
    elif lowered.endswith(("shes", "ches", "xes", "zes", "oes", "sses")):
        base = verb[:-2]
    else:
        base = verb[:-1]
    return f"you {adverb}{base}"


def _capitalised(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] if text else text


def second_person(text: str, spoken: str | None = None) -> str:
    """A fact about the user, addressed to the user: "Your dog is called Biscuit.", "You live in Oslo."

    From the user's own sentence (`spoken`) when there is one, else from the stored third-person
    text ("The user's dog ..."); a fact about anyone else is returned unchanged.

    >>> second_person("The user's dog is called Biscuit.", "Oh, my dog is called Biscuit.")
    'Your dog is called Biscuit.'
    >>> second_person("The user lives in Oslo.")
    'You live in Oslo.'
    """
    if spoken:
        sentence = _REMEMBER.sub("", _LEADING.sub("", spoken.strip())).strip() or spoken.strip()
        for pattern, replacement in _TO_SECOND:
            sentence = re.sub(pattern, replacement, sentence, flags=re.IGNORECASE)
    else:
        sentence = text
        for pattern, replacement in _THIRD_TO_SECOND:
            sentence = re.sub(pattern, replacement, sentence, flags=re.IGNORECASE)
        sentence = _THIRD_VERB.sub(_base_verb, sentence)
        sentence = re.sub(r"\bthe user\b", "you", sentence, flags=re.IGNORECASE)
    sentence = _capitalised(sentence)
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."
