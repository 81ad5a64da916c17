"""Continual fact learning: a stream of made-up facts, each with a paraphrased question.

Entities have syllable-built names ("Velora Quint") that no pretrained model can know, so a correct
answer has to come from what was learned from the stream. Each relation has several fact templates
and several question templates worded differently, so that recalling a fact needs more than matching
the question's words against the stored sentence. Entities get one to four relations each and the
stream is shuffled, so facts about one entity arrive far apart.

Example:
    >>> from memlm.data import continual_facts
    >>> item = continual_facts.generate(n=3, seed=0)[0]
    >>> item.entity in item.fact and item.answer in item.fact and item.answer not in item.question
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FactItem:
    """One fact to learn and the question that tests it; `index` is its position in the stream."""

    fact: str
    question: str
    answer: str
    entity: str
    relation: str
    index: int


@dataclass(frozen=True)
class Relation:
    """Possible one-word answers, fact templates ({e} entity, {a} answer) and question templates ({e})."""

    answers: tuple[str, ...]
    facts: tuple[str, ...]
    questions: tuple[str, ...]


RELATIONS: dict[str, Relation] = {
    "favourite_fruit": Relation(
        ("mango", "papaya", "lychee", "apricot", "kiwi", "plum", "fig", "guava", "cherry", "peach", "pear",
         "banana", "melon", "quince"),
        ("{e}'s favourite fruit is {a}.", "Of all fruits, {e} likes {a} the most.",
         "Nothing pleases {e} more than a fresh {a}."),
        ("Which fruit does {e} enjoy above all others?", "What fruit would {e} choose first at a market?",
         "Name the fruit that {e} prefers."),
    ),
    "home_city": Relation(
        ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Kyoto", "Dublin", "Tbilisi", "Quito", "Perth", "Porto",
         "Krakow", "Accra", "Montreal"),
        ("{e} lives in {a}.", "{e}'s home city is {a}.", "{e} has a flat in {a} and has stayed there for years."),
        ("In which city does {e} reside?", "Where does {e} live?", "What city does {e} call home?"),
    ),
    "pet_name": Relation(
        ("Biscuit", "Pickles", "Mochi", "Waffles", "Pepper", "Noodle", "Ziggy", "Clover", "Muffin", "Tofu",
         "Peanut", "Socks", "Bramble", "Pip"),
        ("{e}'s pet is called {a}.", "{e} owns a dog named {a}.", "{e} adopted a cat and named it {a}."),
        ("What is the name of {e}'s pet?", "What does {e} call their animal companion?",
         "By what name is the animal {e} looks after known?"),
    ),
    "job": Relation(
        # Consonant-initial only, so "works as a {a}" stays grammatical.
        ("carpenter", "dentist", "pilot", "librarian", "chemist", "baker", "plumber", "florist", "surveyor",
         "translator", "jeweller", "potter", "locksmith", "beekeeper", "tailor", "cartographer"),
        ("{e} works as a {a}.", "{e} is a {a} by profession.", "{e} earns a living as a {a}."),
        ("What is {e}'s occupation?", "What does {e} do for a job?", "Which line of work is {e} in?"),
    ),
    "instrument": Relation(
        ("cello", "oboe", "banjo", "harp", "trumpet", "violin", "clarinet", "accordion", "ukulele", "flute",
         "bassoon", "harmonica", "sitar", "trombone"),
        ("{e} plays the {a}.", "{e} has been learning the {a} since childhood.",
         "In the evenings, {e} practises the {a}."),
        ("Which instrument does {e} play?", "What musical instrument is {e} known for?",
         "What instrument would you hear {e} performing on?"),
    ),
    "birth_year": Relation(
        tuple(str(year) for year in range(1948, 2006)),
        ("{e} was born in {a}.", "{e}'s birth year is {a}.", "{e} came into the world in {a}."),
        ("In what year was {e} born?", "When was {e} born?", "Which year appears on {e}'s birth certificate?"),
    ),
    "car_colour": Relation(
        # Consonant-initial only, so "drives a {a} car" stays grammatical.
        ("red", "blue", "green", "silver", "black", "white", "yellow", "purple", "teal", "maroon", "beige",
         "bronze", "crimson", "grey"),
        ("{e} drives a {a} car.", "{e}'s car is painted {a}.", "The car that {e} owns is {a}."),
        ("What colour is {e}'s vehicle?", "Which colour is the automobile {e} drives?",
         "What is the paint colour of {e}'s vehicle?"),
    ),
    "hobby": Relation(
        ("chess", "pottery", "archery", "knitting", "fencing", "gardening", "birdwatching", "origami", "climbing",
         "sailing", "juggling", "calligraphy", "woodworking"),
        ("{e}'s favourite hobby is {a}.", "In their spare time, {e} enjoys {a}.", "{e} spends every weekend on {a}."),
        ("What pastime does {e} love most?", "How does {e} like to spend free time?", "What does {e} do for fun?"),
    ),
    "language": Relation(
        ("Portuguese", "Swahili", "Finnish", "Korean", "Icelandic", "Welsh", "Turkish", "Hungarian", "Tagalog",
         "Basque", "Greek", "Dutch", "Estonian"),
        ("{e} speaks {a} fluently.", "{e}'s second language is {a}.", "{e} learned {a} while living abroad."),
        ("Which foreign language does {e} know?", "What tongue can {e} converse in besides their native one?",
         "Apart from the mother tongue, what can {e} talk in?"),
    ),
    "lucky_number": Relation(
        tuple(str(number) for number in range(2, 100)),
        ("{e}'s lucky number is {a}.", "{e} believes that {a} is a lucky number.",
         "{e} always picks the number {a} for luck."),
        ("Which number does {e} consider fortunate?", "What number brings {e} good fortune?",
         "What digit or figure does {e} trust to bring success?"),
    ),
    "drink": Relation(
        ("espresso", "cocoa", "lemonade", "kombucha", "matcha", "cider", "chai", "buttermilk", "horchata", "lassi",
         "mate", "sherbet"),
        ("{e}'s favourite drink is {a}.", "{e} drinks {a} every morning.", "{e} always orders {a} at the cafe."),
        ("What beverage does {e} like most?", "Which beverage would {e} choose?",
         "What is in the cup {e} usually holds?"),
    ),
    "flower": Relation(
        ("tulip", "orchid", "daisy", "lily", "peony", "lavender", "marigold", "dahlia", "iris", "lotus", "magnolia",
         "jasmine", "poppy"),
        ("{e}'s favourite flower is the {a}.", "{e} plants {a} in the garden every spring.",
         "The flower {e} loves most is the {a}."),
        ("Which bloom does {e} like best?", "What blossom would make {e} happiest as a gift?",
         "Name {e}'s preferred bloom."),
    ),
}

_FIRST_SYLLABLES = ("ve", "lo", "ra", "qui", "ta", "mor", "zan", "bel", "dri", "sa", "ko", "lin", "fe", "ran",
                    "tho", "mi", "nor", "pa", "shi", "el", "va", "ren", "jo", "dax", "cy", "lu", "ber", "ni",
                    "ol", "tes", "wy", "ga")
_LAST_STEMS = ("Quint", "Marr", "Vosk", "Thal", "Brenn", "Oster", "Calv", "Drum", "Fenw", "Hask", "Lorr", "Pell",
               "Rusk", "Stav", "Tirr", "Wend", "Yarr", "Zoll", "Merv", "Kest")
_LAST_ENDINGS = ("", "a", "el", "ik", "ow", "en", "ard", "is", "ley", "ette", "und", "ov")
# An entity word equal to an answer would leak that answer into every question about the entity.
_ANSWER_WORDS = {answer.lower() for relation in RELATIONS.values() for answer in relation.answers}


def _entity(rng: random.Random) -> str:
    first = "".join(rng.choice(_FIRST_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return f"{first} {rng.choice(_LAST_STEMS)}{rng.choice(_LAST_ENDINGS)}"


def generate(n: int = 1000, seed: int = 0) -> list[FactItem]:
    """`n` facts about made-up entities, each (entity, relation) pair once, in a seeded order.

    >>> [item.index for item in generate(n=3, seed=1)]
    [0, 1, 2]
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(f"continual-facts/{seed}")
    entities: set[str] = set()
    rows: list[tuple[str, str, str, str, str]] = []
    while len(rows) < n:
        entity = _entity(rng)
        if entity in entities or _ANSWER_WORDS & set(entity.lower().split()):
            continue
        entities.add(entity)
        for name in rng.sample(sorted(RELATIONS), rng.randint(1, 4)):
            relation = RELATIONS[name]
            answer = rng.choice(relation.answers)
            fact = rng.choice(relation.facts).format(e=entity, a=answer)
            question = rng.choice(relation.questions).format(e=entity)
            rows.append((fact, question, answer, entity, name))
    rows = rows[:n]
    # Shuffled so that one entity's facts are spread through the stream rather than back to back.
    rng.shuffle(rows)
    return [FactItem(*row, index=index) for index, row in enumerate(rows)]
