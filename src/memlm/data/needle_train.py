"""Training needles: free-form facts and number keys like `memlm.data.needles`' in kind, disjoint from
them in everything the evaluation asks, so `memlm eval --tasks needle` keeps measuring generalization.

* **Who and what:** people, cities and objects come from the training cast (`cast("train")`); the
  evaluation's come from the unseen cast, which shares no name, place or object with it.
* **What is said:** other kinds of fact (`KINDS`: a car's colour, a birthday month, a favourite novel's
  author, a flight's gate, ...; the evaluation's are a lab's floor, a spare key, a pet's name, ...),
  each in several sentence shapes and asked in several question shapes, none the evaluation's.
* **Keys:** numbers of 4 to 7 digits under other names ("The access code for the vault is 48213.",
  "Write down this number: 902117."), asked in other words; the evaluation's is five digits, "The pass
  key is N. Remember it. N is the pass key.", asked "What is the pass key?".

tests/data/test_needle_train.py derives the evaluation's sentence and question shapes from
`memlm.data.needles` itself and checks, over many seeds, that no training needle matches one.

    >>> [sample] = generate("facts", n=1, length=0, seed=0, count_tokens=lambda t: len(t.split()))
    >>> any(all(word in fact for word in sample.answer.split()) for fact in sample.facts)
    True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from memlm.data.cast import cast
from memlm.data.haystack import haystack as _haystack
from memlm.data.needles import Needle, hide

TASKS = ("facts", "passkey")
# June is also a first name of the unseen cast: the training needles never write it.
MONTHS = ("January", "February", "March", "April", "May", "July", "August", "September", "October", "November",
          "December")
# Value lists share no word with the evaluation's answers (its colours, instruments, days, ordinals).
CAR_COLOURS = ("silver", "maroon", "navy", "beige", "turquoise", "olive", "gold", "crimson", "lilac", "ivory",
               "bronze", "scarlet", "mauve", "amber")
ALLERGENS = ("peanuts", "shellfish", "sesame", "walnuts", "almonds", "strawberries", "kiwi", "eggs", "celery",
             "mustard", "hazelnuts", "prawns")
JOBS = ("plumber", "pilot", "florist", "locksmith", "surveyor", "midwife", "carpenter", "translator",
        "firefighter", "beekeeper", "electrician", "vet")
RELATIVES = ("brother", "cousin", "mother", "father", "uncle", "aunt")
CHILDREN = ("daughter", "son", "nephew", "niece")
SCHOOLS = ("Primary School", "Grammar School", "High School", "Community School")

# kind: (sentence shapes, question shapes); every question fits every sentence of its kind.
SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "car": (("{p} bought a {v} car last {month}.", "These days {p} drives a {v} car.",
             "The car {p} drives to work is {v}."),
            ("What colour is {p}'s car?", "Which colour of car does {p} have?")),
    "birthday": (("{p}'s birthday falls in {v}.", "{p} celebrates a birthday every {v}.",
                  "Every year in {v}, {p} throws a birthday party."),
                 ("In which month is {p}'s birthday?", "When does {p} celebrate a birthday?")),
    "novel": (("{p}'s favourite novel was written by {v}.", "The book {p} loves most is by {v}."),
              ("Who wrote {p}'s favourite novel?", "Which author wrote the book {p} loves most?")),
    "flight": (("{p}'s flight to {city} leaves from gate {v}.", "{p} boards the plane for {city} at gate {v}."),
               ("From which gate does {p}'s flight leave?", "At which gate does {p} board the plane?")),
    "bike lock": (("{p} set the combination of their bike lock to {v}.", "{p}'s bike lock opens with {v}."),
                  ("Which combination opens {p}'s bike lock?", "What numbers unlock the bike of {p}?")),
    "school": (("{p}'s {child} goes to {v}.", "This autumn {p}'s {child} started at {v}."),
               ("Which school does {p}'s {child} attend?", "Where does the {child} of {p} go to school?")),
    "allergy": (("{p} is allergic to {v}.", "Because of an allergy, {p} stays away from {v}."),
                ("What is {p} allergic to?", "Which food gives {p} an allergic reaction?")),
    "parcel": (("{p}'s parcel is waiting at the depot in {v}.", "The courier left {p}'s parcel at the {v} depot."),
               ("In which town is {p}'s parcel waiting?", "Which town's depot has the parcel for {p}?")),
    "hotel room": (("{p} is staying in room {v} of the hotel.", "At the hotel, {p} got the keys to room {v}."),
                   ("Which hotel room is {p} staying in?", "What room number did {p} get at the hotel?")),
    "job": (("{p}'s {relative} works as a {v}.", "{p}'s {relative} has trained to become a {v}."),
            ("What does {p}'s {relative} do for a living?", "Which job does the {relative} of {p} have?")),
    "sale": (("{p} sold {thing} for {v} pounds.", "A buyer paid {p} {v} pounds for {thing}."),
             ("How many pounds did {p} get for {thing}?", "For how much did {p} sell {thing}?")),
    "dentist": (("{p} has booked the dentist for {v}.", "{p}'s appointment with the dentist is at {v}."),
                ("At what time will {p} see the dentist?", "When is {p}'s dentist appointment?")),
}
KINDS = tuple(SHAPES)

# Number keys under other names than the evaluation's "pass key": (sentence shapes, question shapes).
KEYS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("The access code for the vault is {k}.", "To open the vault, enter {k}."),
     ("Which code opens the vault?", "What number must be entered to open the vault?")),
    (("Write down this number: {k}.", "Here is a number to keep in mind: {k}."),
     ("Which number were you given?", "What was the number you were told to keep?")),
    (("Your PIN is {k}. Do not share it.", "Your new card's PIN is {k}."),
     ("Which PIN were you told?", "What is your PIN?")),
    (("The secret number is {k}.", "Keep this secret number safe: {k}."),
     ("Which secret number was mentioned?", "What was the secret number?")),
    (("The password of the archive is {k}.", "Type {k} to unlock the archive."),
     ("Which password unlocks the archive?", "What must be typed to unlock the archive?")),
    (("The door code is {k}.", "Press {k} on the keypad to open the front door."),
     ("Which digits open the front door?", "What code opens the door?")),
)
REPEATS = ("", "", "I repeat: {k}.", "Once more, that is {k}.", "{k}, in case you forget.")


def generate(task: str, n: int, length: int, seed: int, count_tokens: Callable[[str], int],
             haystack: Sequence[str] | None = None, first: int = 0) -> list[Needle]:
    """`n` training samples of `task` ("facts": 3-5 facts about different people, one asked;
    "passkey": one number key of 4-7 digits), placed like `memlm.data.needles.generate`'s at about
    `length` tokens of `haystack` (required when `length` > 0: the default is the evaluation's)."""
    if task not in TASKS:
        raise ValueError(f"unknown training needle task {task!r}; choose from {', '.join(TASKS)}")
    if n < 0 or length < 0:
        raise ValueError(f"n and length must be non-negative, got n={n}, length={length}")
    if length > 0 and haystack is None:
        raise ValueError("training needles hide in a training haystack: pass `haystack` (never pg-essays)")
    hay = _haystack(tuple(haystack), count_tokens) if length > 0 else None
    return hide(task, n, length, seed, first, hay, _key if task == "passkey" else _facts, "needle-train")


class _Fresh:
    """Draws from the training cast whose words no earlier draw used (no two people, and no person and
    author or city, share a word: each question has one answer)."""

    def __init__(self, rng: random.Random):
        self.rng, self.cast, self.taken = rng, cast("train"), set()

    def __call__(self, draw: Callable[[], str]) -> str:
        for _ in range(1000):
            value = draw()
            words = {word.casefold() for word in value.split()} - {"the", "of"}
            if not words & self.taken:
                self.taken |= words
                return value
        raise RuntimeError("no fresh name left to draw")  # not reached: the vocabularies hold thousands

    def person(self) -> str:
        return self(lambda: self.cast.person(self.rng, self.rng.choice(("female", "male"))))


def _fact(kind: str, person: str, rng: random.Random, fresh: _Fresh) -> tuple[str, str, str]:
    """One fact of `kind` about `person`: (sentence, question, answer)."""
    train = fresh.cast
    slots = {"p": person, "month": rng.choice(MONTHS), "child": rng.choice(CHILDREN),
             "relative": rng.choice(RELATIVES)}
    if kind == "car":
        value = rng.choice(CAR_COLOURS)
    elif kind == "birthday":
        value = rng.choice(MONTHS)
    elif kind == "novel":
        value = fresh(lambda: f"{rng.choice(train.female + train.male)} {rng.choice(train.surnames)}")
    elif kind == "flight":
        value = f"{rng.choice('ABCDEFGH')}{rng.randint(1, 40)}"
        slots["city"] = fresh(lambda: rng.choice(train.cities))
    elif kind == "bike lock":
        digits = rng.randint(3, 6)
        value = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
    elif kind == "school":
        value = f"{fresh(lambda: rng.choice(train.surnames))} {rng.choice(SCHOOLS)}"
    elif kind == "allergy":
        value = rng.choice(ALLERGENS)
    elif kind == "parcel":
        value = fresh(lambda: rng.choice(train.cities))
    elif kind == "hotel room":
        value = str(rng.randint(101, 950))
    elif kind == "job":
        value = rng.choice(JOBS)
    elif kind == "sale":
        value = str(rng.choice((rng.randint(5, 99), rng.randint(1, 40) * 25)))
        slots["thing"] = fresh(lambda: train.thing(rng))
    else:  # dentist
        value = f"{rng.randint(8, 17)}:{rng.choice(('00', '15', '30', '45'))}"
    sentences, questions = SHAPES[kind]
    sentence = rng.choice(sentences).format(v=value, **slots)
    return sentence[0].upper() + sentence[1:], rng.choice(questions).format(**slots), value


def _facts(rng: random.Random) -> tuple[list[str], str, str]:
    fresh = _Fresh(rng)
    count = rng.randint(3, 5)
    people = [fresh.person() for _ in range(count)]
    kinds = rng.sample(KINDS, count) if rng.random() < 0.5 else rng.choices(KINDS, k=count)  # kinds may repeat
    written = [_fact(kind, person, rng, fresh) for kind, person in zip(kinds, people, strict=True)]
    _, question, answer = rng.choice(written)
    return [fact for fact, _, _ in written], question, answer


def _key(rng: random.Random) -> tuple[list[str], str, str]:
    digits = rng.randint(4, 7)
    key = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
    sentences, questions = rng.choice(KEYS)
    fact = " ".join(part for part in (rng.choice(sentences), rng.choice(REPEATS)) if part).format(k=key)
    return [fact], rng.choice(questions), key
