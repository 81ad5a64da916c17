"""When a new fact replaces an old one: rule-found slots ("the user's home", "Ada's favourite colour").

A fact *supersedes* an active fact of the same user when all of these hold (`supersedes`), and the
reason names each of them:

1. both state a single value for the same slot of the same subject: the subject is the user ("I",
   "my", "the user") or a named entity ("Velora Quint's"); the slot is found by a few English rules:
   - "<subject's> <attribute> is <value>" ("My favourite colour is teal", "Ada's phone number is 555"),
     "<subject's> <thing> is called / named <value>" (slot "<thing> name");
   - "<subject> lives in / moved to / relocated to / is based in <value>" (slot "home");
   - "<subject> works as a <value>", "<subject> is a <value> by trade / profession" (slot "job");
   attributes match when their last words agree and one's words contain the other's ("number" and
   "phone number"; not "favourite colour" and "car colour");
2. the values differ, neither contains the other, and they are of the same kind (both names, both
   numbers, or both common words): "I live in a small town" does not replace "I live in Tallinn", it
   describes it, and "Lisbon, near the river" refines "Lisbon";
3. neither says it adds rather than replaces ("other", "another", "second", "also", "too", "as well"),
   and neither is plural ("my kids are ..."), past ("I lived in ..."), or a possession ("I have a dog
   named Rex": a second dog is a second fact);
4. the two facts are close in meaning: retrieval cosine >= the bank's `supersede_similarity`, unless
   the new one says it is a change ("new", "now", "moved", "changed", "no longer", "anymore").

Everything else is kept side by side: a missed update leaves two facts for the reader to weigh,
a wrong merge loses one, so the rules err towards keeping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ADDITIVE = re.compile(r"\b(other|another|second|third|also|too|as well|either|both)\b", re.IGNORECASE)
_CHANGE = re.compile(r"\b(new|newly|now|moved|relocated|changed|switched|no longer|anymore|any more|"
                     r"these days|nowadays|currently|since)\b", re.IGNORECASE)
_MODIFIERS = {"new", "current", "latest", "old", "previous", "real", "actual", "present", "former", "usual"}
_USER_SUBJECT = r"(?:i|the user|we)"
_USER_POSSESSIVE = r"(?:my|the user's|our)"
_NAME = r"(?-i:[A-Z][\w'-]*(?: [A-Z][\w'-]*){0,3})"  # capitalised words, whatever the pattern's flags
_FILLERS = r"(?:(?:really|actually|just|now|currently|still|recently|finally|also)\s+)*"

_POSSESSIVE_IS = re.compile(
    rf"^(?:(?P<user>{_USER_POSSESSIVE})|(?P<name>{_NAME})'s)\s+(?P<attr>(?:[\w'-]+\s+){{0,3}}?[\w'-]+)\s+"
    rf"(?P<verb>is|are|was|were)\s+{_FILLERS}(?:(?P<naming>called|named)\s+)?(?P<value>.+?)[.!]?$",
    re.IGNORECASE)
_HOME = re.compile(
    rf"^(?:(?P<user>{_USER_SUBJECT})|(?P<name>{_NAME}))\s+{_FILLERS}(?:'m\s+|am\s+|is\s+|are\s+|have\s+|has\s+)?"
    rf"{_FILLERS}(?P<verb>lives?|lived|living|moved|relocated|based)\s+(?:back\s+)?(?:from\s+.+?\s+)?(?:in|to)\s+(?P<value>.+?)[.!]?$",
    re.IGNORECASE)
_JOB = re.compile(
    rf"^(?:(?P<user>{_USER_SUBJECT})|(?P<name>{_NAME}))\s+{_FILLERS}(?:(?P<verb>works?|earns a living)\s+as|"
    rf"(?:'m|am|is)(?:\s+now)?)\s+(?:an?\s+)(?P<value>[\w -]+?)(?(verb)|\s+by\s+(?:trade|profession))"
    rf"(?:\s*,.*)?[.!]?$", re.IGNORECASE)
# Time phrases and asides after a value ("Oslo last month", "pilot these days") are not the value.
_TRAILING = re.compile(r"\s+(?:these days|nowadays|now|at the moment|(?:last|this|next) \w+|recently|for now|"
                       r"by trade|by profession|actually|(?:a |an |\w+ )?(?:days?|weeks?|months?|years?) ago|"
                       r"since \w+|for (?:\w+ )?(?:days|weeks|months|years))\b.*$", re.IGNORECASE)


@dataclass(frozen=True)
class Slot:
    """What a fact states: `value` for `attribute` of `subject` ("user" or a name, folded)."""

    subject: str
    attribute: str
    value: str
    kind: str  # "name", "number" or "word": only values of one kind contradict each other
    additive: bool  # says it adds to rather than replaces ("my other dog ...")
    change: bool  # says it is a change ("my new number ...", "I moved to ...")


def _clean(sentence: str) -> str:
    text = sentence.strip()
    text = re.sub(r"^(?:(?:oh|well|so|by the way|btw|also|and|actually|anyway)\b[,!.\s]*)+", "", text,
                  flags=re.IGNORECASE)
    return re.sub(r"\bI'm\b", "I am", text)


def _value_kind(value: str) -> str:
    words = value.split()
    if any(re.fullmatch(r"[+\d][\d\s().,:/-]*", word) for word in words):
        return "number"
    content = [w for w in words if w.lower() not in {"a", "an", "the", "my", "our"}]
    if content and all(w[:1].isupper() for w in content):
        return "name"
    return "word"


def _normalise_value(value: str) -> str:
    value = _TRAILING.sub("", value.strip().rstrip(".!"))
    value = re.sub(r",.*$", "", value)
    return value.strip()


_LEAD_IN = re.compile(r"^(?P<lead>[^:;,\u2014\u2013]{1,40}?)\s*[:;,\u2014\u2013-]\s+(?P<rest>.+)$")


def find_slot(sentence: str) -> Slot | None:
    """The slot `sentence` fills, if one of the rules recognises it (see the module docstring); a
    short lead-in before a colon, dash or comma ("Big news: I moved to Oslo") is skipped."""
    slot = _find_slot(sentence)
    if slot is None:
        match = _LEAD_IN.match(_clean(sentence))
        if match and len(match.group("lead").split()) <= 4:
            slot = _find_slot(match.group("rest"))
    return slot


def _find_slot(sentence: str) -> Slot | None:
    text = _clean(sentence)
    if not text or text.endswith("?"):
        return None
    additive = bool(_ADDITIVE.search(text))
    change = bool(_CHANGE.search(text))
    for pattern, attribute in ((_HOME, "home"), (_JOB, "job"), (_POSSESSIVE_IS, None)):
        match = pattern.match(text)
        if match is None:
            continue
        subject = "user" if match.group("user") else match.group("name").casefold()
        verb = (match.groupdict().get("verb") or "").lower()
        if attribute is None:
            if verb in ("are", "were", "was"):
                return None  # plural (a set of values) or past (history, not the current value)
            words = [re.sub(r"'s$", "", w.lower()) for w in match.group("attr").split()]
            words = [w for w in words if w not in _MODIFIERS]
            if not words:
                return None
            if match.group("naming"):
                words.append("name")
            value = match.group("value")
            if re.match(r"^(?:\w+ing|not|no|going|about|like|in|at|on|from|with|so|very|too)\b", value, re.IGNORECASE):
                return None  # "my sister is visiting soon", "my flat is in Porto": not a value of the attribute
            attribute = " ".join(words)
        elif attribute == "home" and verb == "lived":
            return None
        value = _normalise_value(match.group("value"))
        if not value or len(value.split()) > 6:
            return None
        return Slot(subject, attribute, value.casefold(), _value_kind(value), additive, change)
    return None


def same_attribute(a: str, b: str) -> bool:
    """Attributes match when their last words agree and one's words contain the other's."""
    words_a, words_b = a.split(), b.split()
    if words_a[-1] != words_b[-1]:
        return False
    return set(words_a) <= set(words_b) or set(words_b) <= set(words_a)


def conflict(new: Slot, old: Slot) -> str | None:
    """Why `new` replaces `old` (rules 1-3 of the module docstring), or None if it does not."""
    if new.subject != old.subject or not same_attribute(new.attribute, old.attribute):
        return None
    if new.additive or old.additive or new.value == old.value or new.kind != old.kind:
        return None
    new_words, old_words = set(new.value.split()), set(old.value.split())
    if new_words <= old_words or old_words <= new_words:
        return None  # one refines the other ("Lisbon" and "Lisbon near the river"): no contradiction
    owner = "the user's" if new.subject == "user" else f"{new.subject}'s"
    return f"same slot ({owner} {new.attribute}): {old.value!r} -> {new.value!r}"


# Questions about one of the user's slots: "Where do I live?", "What do I do for a living?", "What is
# my favourite colour?", "What's my dog called?", "What is the name of my sister?".
_QUESTION_SLOTS = (
    (re.compile(r"^(?:where|which (?:city|town|country)|what (?:city|town|country))\b.*"
                r"\b(?:live|living|based|reside|home)\b", re.IGNORECASE), "home"),
    (re.compile(r"\b(?:for a living|my (?:job|occupation|profession|line of work)|do for work)\b", re.IGNORECASE),
     "job"),
    (re.compile(r"^(?:what|who)(?:'s| is| are)? (?:the name of )?my ((?:[\w'-]+ ){0,3}?[\w'-]+?)(?:'s name)?"
                r"(?: called| named)?\s*\??$", re.IGNORECASE), None),
)


def question_slot(question: str) -> str | None:
    """The attribute of the user a question asks for, by the same vocabulary as `find_slot`, or None.

    >>> question_slot("What's my dog called?"), question_slot("Where do I live now?")
    ('dog name', 'home')
    """
    for pattern, attribute in _QUESTION_SLOTS:
        match = pattern.search(question.strip())
        if match is None:
            continue
        if attribute is not None:
            return attribute
        words = [re.sub(r"'s$", "", word.lower()) for word in match.group(1).split()]
        words = [word for word in words if word not in _MODIFIERS]
        if re.search(r"name of my|'s name|\bcalled\b|\bnamed\b", question, re.IGNORECASE):
            words.append("name")
        return " ".join(words) or None
    return None
