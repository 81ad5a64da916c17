"""Free-form needles: several facts in ordinary sentences about invented people and things ("Dr. Okafor's
lab moved to the fourth floor in March."), hidden in long text and asked as open questions, and a pass
key. Unlike bAbI's stories, each fact has its own shape; the answer is scored by its words.

People, places and things come from the unseen cast (`memlm.data.cast`), which no training data draws.

    >>> [sample] = generate("facts", n=1, length=0, seed=0, count_tokens=lambda t: len(t.split()))
    >>> any(all(word in fact for word in sample.answer.split()) for fact in sample.facts)
    True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memlm.data.babilong import Sample
from memlm.data.cast import cast
from memlm.data.haystack import haystack as _haystack

TASKS = ("facts", "passkey")
ORDINALS = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "grey", "white", "black", "brown", "pink", "teal")
INSTRUMENTS = ("cello", "violin", "oboe", "trumpet", "harp", "banjo", "accordion", "bassoon", "ukulele", "piano")
PETS = ("puppy", "kitten", "parrot", "tortoise", "rabbit", "goldfish", "hamster", "pony")

KINDS = ("floor", "spare key", "pet", "locker", "meeting", "instrument", "paint", "wedding")


def _fact(kind: str, person: str, rng: random.Random) -> tuple[str, str, str]:
    """One fact of `kind` about `person`: (sentence, question, answer)."""
    unseen = cast("unseen")
    if kind == "floor":
        floor, month = rng.choice(ORDINALS), rng.choice(MONTHS)
        return (f"{person}'s lab moved to the {floor} floor in {month}.", f"Which floor did {person}'s lab move to?",
                floor)
    if kind == "spare key":
        city = rng.choice(unseen.cities)
        return (f"{person} keeps a spare key at a friend's flat in {city}.",
                f"In which city does {person} keep a spare key?", city)
    if kind == "pet":
        pet, name = rng.choice(PETS), rng.choice(unseen.female + unseen.male)
        return f"{person} named the new {pet} {name}.", f"What did {person} name the new {pet}?", name
    if kind == "locker":
        code = str(rng.randrange(1000, 10000))
        return f"The code of {person}'s locker is {code}.", f"What is the code of {person}'s locker?", code
    if kind == "meeting":
        day = rng.choice(DAYS)
        return f"{person} moved the weekly meeting to {day}.", f"Which day is {person}'s weekly meeting now?", day
    if kind == "instrument":
        instrument = rng.choice(INSTRUMENTS)
        return (f"{person} has been learning to play the {instrument} since the spring.",
                f"Which instrument is {person} learning to play?", instrument)
    if kind == "paint":
        colour, thing = rng.choice(COLOURS), rng.choice(unseen.objects)
        return (f"{person} painted the {thing} {colour} last weekend.", f"What colour did {person} paint the {thing}?",
                colour)
    place = unseen.place(rng)
    return f"The wedding of {person} will be held at {place}.", f"Where will {person}'s wedding be held?", \
        place.removeprefix("the ")


@dataclass(frozen=True)
class Needle(Sample):
    """One question, as a BABILong sample: `context` is the haystack with `facts` placed in order; the
    answer is free text, and every one of its words must be in a correct reply (`answer_correct`)."""


INSTRUCTION = ("I will give you a long text with a few facts hidden in it, and a question. Answer the question "
               "from the facts in a few words.")


def question_prompt(sample: Needle) -> str:
    return f"{INSTRUCTION}\n\nQuestion: {sample.question}"


def generate(task: str, n: int, length: int, seed: int, count_tokens: Callable[[str], int],
             haystack: Sequence[str] | None = None, transform: None = None, first: int = 0) -> list[Needle]:
    """`n` samples of `task` ("facts": 3-5 facts about different people, one asked; "passkey": a five-digit
    key), placed like `memlm.data.babilong.generate`'s at about `length` tokens."""
    if task not in TASKS:
        raise ValueError(f"unknown needle task {task!r}; choose from {', '.join(TASKS)}")
    if n < 0 or length < 0:
        raise ValueError(f"n and length must be non-negative, got n={n}, length={length}")
    hay = _haystack(None if haystack is None else tuple(haystack), count_tokens) if length > 0 else None
    return hide(task, n, length, seed, first, hay, _passkey if task == "passkey" else _facts, "needles")


def hide(task: str, n: int, length: int, seed: int, first: int, hay: Any,
         draw: Callable[[random.Random], tuple[list[str], str, str]], stream: str) -> list[Needle]:
    """Samples `first`..`first + n - 1`: facts, question and answer from `draw`, the facts hidden in
    `hay` (None: the facts alone) at about `length` tokens; `stream` names the random streams, so the
    evaluation's and training's draws never coincide."""
    samples = []
    for index in range(first, first + n):
        facts, question, answer = draw(random.Random(f"{stream}/{task}/{seed}/{index}"))
        place = random.Random(f"{stream}/haystack/{task}/{seed}/{index}")
        context = " ".join(facts) if hay is None else hay.context(
            facts, place.randrange(len(hay.sentences)), sorted(place.random() for _ in facts), length)
        samples.append(Needle(task, context, question, answer, tuple(facts), length, seed))
    return samples


def _facts(rng: random.Random) -> tuple[list[str], str, str]:
    chosen, people = cast("unseen"), []
    while len(people) < 5:  # a different person in every fact, so each question has one answer
        person = chosen.person(rng, rng.choice(("female", "male")))
        if not any(set(person.split()) & set(other.split()) for other in people):
            people.append(person)
    kinds = rng.sample(KINDS, rng.randint(3, 5))
    written = [_fact(kind, person, rng) for kind, person in zip(kinds, people[:len(kinds)], strict=True)]
    _, question, answer = rng.choice(written)
    return [fact for fact, _, _ in written], question, answer


def _passkey(rng: random.Random) -> tuple[list[str], str, str]:
    key = f"{rng.randrange(10000, 100000)}"
    return [f"The pass key is {key}. Remember it. {key} is the pass key."], "What is the pass key?", key


def answer_correct(reply: str, answer: str) -> bool:
    """Every word of `answer` is in `reply` (case-insensitive, whole words).

    >>> answer_correct("It moved to the fourth floor.", "fourth"), answer_correct("The 4th.", "fourth")
    (True, False)
    """
    from memlm.eval.scoring import contains

    return all(contains(reply, word) for word in answer.split())
