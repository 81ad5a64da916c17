"""Who and what the BABILong-style stories are about: bAbI's own cast, and large vocabularies of
people, places and objects split into a training part and an unseen part that training never draws.

A memory trained only on bAbI's four one-token names learns the benchmark's words more than the
skill of keeping facts. The vocabularies here are large and varied: first names and surnames from
Faker's person providers across ~80 locales (several sub-word tokens each, most of them), city names
from its address providers, and a few hundred common nouns for rooms, buildings, landmarks and
objects (one or two words). A person is a first name, a first name and surname, or a title and
surname ("Dr. Okafor"); a place is a room or building, a city, or a named building ("the Lindqvist
Gallery").

Every word belongs to one split by a hash of its spelling (`split_of`): one in five is `unseen`, the
rest `train`; bAbI's own words are always `train`. Names built from several words draw every word
from the same split, so the two casts share no name, place or object (tested).

`recast(...)` rewrites a bAbI story into a cast: the same world, other names, places and objects.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import random
import re
from dataclasses import dataclass
from functools import lru_cache

SPLITS = ("train", "unseen")
UNSEEN_SHARE = 5  # one word in UNSEEN_SHARE is unseen

BABI_FEMALE = ("Mary", "Sandra")
BABI_MALE = ("John", "Daniel", "Fred", "Bill", "Jeff")
BABI_PLACES = ("kitchen", "hallway", "bathroom", "garden", "office", "bedroom")
BABI_OBJECTS = ("football", "apple", "milk")

ROOMS_AND_BUILDINGS = (
    "kitchen", "hallway", "bathroom", "garden", "office", "bedroom", "cellar", "attic", "garage", "library",
    "studio", "lobby", "pantry", "porch", "balcony", "basement", "corridor", "workshop", "nursery", "chapel",
    "gym", "classroom", "lounge", "terrace", "shed", "barn", "kiosk", "cafeteria", "warehouse", "greenhouse",
    "laundry room", "dining room", "living room", "guest room", "boiler room", "waiting room", "staff room",
    "control room", "reading room", "music room", "dressing room", "storeroom", "sunroom", "playroom", "den",
    "conservatory", "veranda", "courtyard", "patio", "loft", "mezzanine", "vestibule", "foyer", "parlour",
    "scullery", "larder", "wine cellar", "server room", "break room", "mail room", "car park", "rooftop",
    "train station", "bus station", "airport", "harbour", "marina", "lighthouse", "museum", "gallery",
    "theatre", "cinema", "concert hall", "stadium", "arena", "swimming pool", "ice rink", "bowling alley",
    "bakery", "butcher's shop", "pharmacy", "post office", "town hall", "city hall", "courthouse", "police station",
    "fire station", "hospital", "clinic", "dentist's office", "school", "university", "kindergarten",
    "supermarket", "market", "bookshop", "flower shop", "hardware store", "tailor's shop", "barber shop",
    "hotel", "hostel", "inn", "pub", "tavern", "restaurant", "diner", "bistro", "café", "tea room", "canteen",
    "factory", "mill", "brewery", "winery", "distillery", "foundry", "sawmill", "quarry", "mine", "dockyard",
    "bank", "embassy", "consulate", "parliament", "monastery", "cathedral", "church", "mosque", "synagogue",
    "temple", "cemetery", "castle", "palace", "fortress", "tower", "windmill", "observatory", "planetarium",
    "aquarium", "zoo", "botanical garden", "park", "playground", "orchard", "vineyard", "meadow", "forest",
    "beach", "pier", "boardwalk", "bridge", "tunnel", "canal", "riverbank", "lake", "pond", "waterfall",
    "campsite", "cabin", "cottage", "farmhouse", "villa", "mansion", "bungalow", "chalet", "caravan", "tent",
    "laboratory", "archive", "record office", "newsroom", "printing house", "recording studio", "dance hall",
    "ballroom", "banquet hall", "conference room", "boardroom", "reception", "cloakroom", "ticket office",
    "platform", "departure lounge", "customs hall", "petrol station", "car wash", "garden centre", "nursery school",
    "allotment", "stable", "kennel", "henhouse", "boathouse", "pavilion", "bandstand", "gazebo", "fountain",
    "town square", "market square", "high street", "shopping centre", "arcade", "food court", "sports hall",
    "tennis court", "golf course", "racecourse", "velodrome", "skate park", "climbing wall", "sauna", "spa",
    "laundrette", "launderette", "repair shop", "bicycle shop", "toy shop", "jeweller's", "pawn shop",
    "art school", "dance studio", "yoga studio", "pottery studio", "photo studio", "bell tower", "crypt",
    "cloister", "sacristy", "granary", "hayloft", "dairy", "smokehouse", "icehouse", "watchtower", "gatehouse",
)
BUILDING_KINDS = ("Library", "Gallery", "Museum", "Theatre", "Hall", "Institute", "Hotel", "Clinic", "Academy",
                  "Tower", "Centre", "Observatory", "Pavilion", "Arena", "Chapel", "Market", "Bakery", "Garden")
OBJECTS = (
    "football", "apple", "milk", "book", "key", "umbrella", "hat", "bottle", "ball", "cup", "lamp", "pencil",
    "box", "bag", "phone", "coin", "ticket", "scarf", "candle", "map", "violin", "guitar", "trumpet", "drum",
    "camera", "laptop", "tablet", "notebook", "diary", "letter", "parcel", "envelope", "postcard", "photograph",
    "painting", "vase", "teapot", "kettle", "frying pan", "saucepan", "ladle", "spoon", "fork", "knife", "plate",
    "bowl", "jug", "basket", "bucket", "broom", "mop", "hammer", "screwdriver", "wrench", "saw", "drill",
    "paintbrush", "ruler", "stapler", "calculator", "clock", "watch", "bracelet", "necklace", "ring", "brooch",
    "wallet", "purse", "suitcase", "backpack", "briefcase", "jacket", "coat", "sweater", "glove", "boot",
    "sandal", "helmet", "mask", "torch", "lantern", "compass", "telescope", "microscope", "magnifying glass",
    "globe", "atlas", "dictionary", "newspaper", "magazine", "comic", "puzzle", "chess set", "deck of cards",
    "kite", "skateboard", "bicycle", "scooter", "tennis racket", "cricket bat", "baseball glove", "frisbee",
    "rope", "ladder", "tent peg", "sleeping bag", "blanket", "pillow", "cushion", "towel", "soap", "toothbrush",
    "comb", "mirror", "perfume", "lipstick", "medal", "trophy", "flag", "banner", "badge", "stamp", "seashell",
    "pebble", "pine cone", "feather", "acorn", "orange", "banana", "pear", "lemon", "melon", "pineapple",
    "loaf of bread", "cheese", "cake", "pie", "sandwich", "jar of honey", "bag of rice", "bottle of wine",
    "thermos", "lunchbox", "water bottle", "radio", "record player", "headphones", "microphone", "speaker",
    "remote control", "charger", "battery", "light bulb", "extension cord", "flashlight", "padlock", "chain",
    "toolbox", "sewing kit", "knitting needles", "ball of wool", "flower pot", "watering can", "seed packet",
    "bird feeder", "fishing rod", "net", "oar", "paddle", "life jacket", "anchor", "snow globe", "music box",
    "teddy bear", "doll", "toy train", "marble", "yo-yo", "harmonica", "flute", "clarinet", "accordion",
    "sketchbook", "crayon", "chalk", "eraser", "folder", "binder", "clipboard", "receipt", "invoice", "passport",
)
TITLES = {"Dr.": None, "Professor": None, "Captain": None, "Mr.": "male", "Mrs.": "female", "Ms.": "female",
          "Aunt": "female", "Uncle": "male"}
_NAME = re.compile(r"[A-Z][a-zà-öø-ÿ]{1,13}")


def split_of(word: str) -> str:
    """The split a word belongs to: "unseen" for one word in five (by a hash of its spelling), else
    "train"; bAbI's own words are always "train".

    >>> split_of("Mary"), split_of("kitchen")
    ('train', 'train')
    """
    if word in _BABI_WORDS:
        return "train"
    digest = hashlib.sha256(word.casefold().encode()).digest()
    return "unseen" if int.from_bytes(digest[:4], "big") % UNSEEN_SHARE == 0 else "train"


_BABI_WORDS = frozenset((*BABI_FEMALE, *BABI_MALE, *BABI_PLACES, *BABI_OBJECTS))


@dataclass(frozen=True)
class Cast:
    """One split's vocabularies (each sorted, so draws are reproducible)."""

    split: str
    female: tuple[str, ...]
    male: tuple[str, ...]
    surnames: tuple[str, ...]
    rooms: tuple[str, ...]  # rooms, buildings, landmarks: "the <room>"
    cities: tuple[str, ...]
    objects: tuple[str, ...]  # "the <object>"

    def person(self, rng: random.Random, gender: str) -> str:
        """A first name (60%), a first name and surname (25%) or a title and surname (15%)."""
        first = rng.choice(self.female if gender == "female" else self.male)
        draw = rng.random()
        if draw < 0.6:
            return first
        if draw < 0.85:
            return f"{first} {rng.choice(self.surnames)}"
        titles = [title for title, fits in TITLES.items() if fits in (None, gender)]
        return f"{rng.choice(titles)} {rng.choice(self.surnames)}"

    def place(self, rng: random.Random) -> str:
        """A place as it follows "to": "the <room>" (65%), a city (20%), "the <Surname> <Building>" (15%)."""
        draw = rng.random()
        if draw < 0.65:
            return f"the {rng.choice(self.rooms)}"
        if draw < 0.85:
            return rng.choice(self.cities)
        return f"the {rng.choice(self.surnames)} {rng.choice(BUILDING_KINDS)}"

    def thing(self, rng: random.Random) -> str:
        return f"the {rng.choice(self.objects)}"


def answer_form(phrase: str) -> str:
    """What an answer names: the phrase without its article ("the train station" -> "train station")."""
    return phrase[4:] if phrase.startswith("the ") else phrase


@lru_cache(maxsize=2)
def cast(split: str) -> Cast:
    """The vocabularies of `split` ("train" or "unseen"); needs Faker (`pip install faker`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown cast split {split!r}; choose from {', '.join(SPLITS)}")
    female, male, surnames, cities = _faker_words()

    def keep(words: tuple[str, ...] | set[str]) -> tuple[str, ...]:
        return tuple(sorted(w for w in words if all(split_of(part) == split for part in w.split())))

    return Cast(split, keep(female | (set(BABI_FEMALE) if split == "train" else set())),
                keep(male | (set(BABI_MALE) if split == "train" else set())), keep(surnames),
                keep(ROOMS_AND_BUILDINGS), keep(cities), keep(OBJECTS))


@lru_cache(maxsize=1)
def _faker_words() -> tuple[set[str], set[str], set[str], set[str]]:
    """First names (female, male), surnames and city names from every locale Faker ships."""
    try:
        from faker.providers import address, person
    except ImportError as error:
        raise ImportError("the story vocabularies need Faker: pip install faker") from error
    female, male, surnames, cities = set(), set(), set(), set()
    for locale in sorted(module.name for module in pkgutil.iter_modules(person.__path__)):
        provider = importlib.import_module(f"{person.__name__}.{locale}").Provider
        female |= {n for n in getattr(provider, "first_names_female", ()) if _NAME.fullmatch(n)}
        male |= {n for n in getattr(provider, "first_names_male", ()) if _NAME.fullmatch(n)}
        surnames |= {n for n in getattr(provider, "last_names", ()) if _NAME.fullmatch(n)}
    for locale in sorted(module.name for module in pkgutil.iter_modules(address.__path__)):
        provider = importlib.import_module(f"{address.__name__}.{locale}").Provider
        cities |= {c for c in getattr(provider, "cities", ()) if re.fullmatch(r"[A-Z][a-z]{2,13}", c)}
    both = female & male  # names given to either: keep them out, so a pronoun always fits its name
    return female - both, male - both, surnames - female - male, cities - female - male - surnames


# --- rewriting a bAbI story into a cast -------------------------------------------------------------
_PEOPLE = re.compile(r"\b(" + "|".join((*BABI_FEMALE, *BABI_MALE)) + r")\b")
_PLACES = re.compile(r"\b([Tt]he) (" + "|".join(BABI_PLACES) + r")\b")
_OBJECTS = re.compile(r"\b([Tt]he) (" + "|".join(BABI_OBJECTS) + r")\b")
PRONOUNS = {"female": "she", "male": "he"}

# Other ways of saying each bAbI action (training only: the evaluation keeps bAbI's verbs).
PHRASINGS = (
    (re.compile(r"\b(?:moved|went back|went|journeyed|travelled) to\b"),
     ("moved to", "went to", "walked to", "ran to", "headed to", "hurried to", "drove to", "cycled to",
      "wandered over to", "strolled to", "went over to", "travelled to", "journeyed to", "went back to",
      "made a trip to", "rushed to", "returned to", "set off for", "relocated to", "crossed over to")),
    (re.compile(r"\b(?:picked up|got|grabbed|took)\b"),
     ("picked up", "grabbed", "took", "collected", "got", "lifted", "fetched", "snatched", "took hold of")),
    (re.compile(r"\b(?:dropped|discarded|put down|left)\b"),
     ("dropped", "put down", "left", "set down", "discarded", "abandoned", "let go of")),
    (re.compile(r"\b(?:gave|handed|passed)\b"), ("gave", "handed", "passed", "brought", "offered", "sent")),
)
OPENERS = ("", "", "", "", "Then ", "Later, ", "After that, ", "In the morning, ", "That evening, ",
           "Soon afterwards, ", "At noon, ", "Meanwhile, ")


@dataclass(frozen=True)
class Recast:
    """A story transform (`babilong.generate(..., transform=Recast(...))`): bAbI's people, places and
    objects become `split`'s (or stay bAbI's with probability `keep_babi`), consistently across the
    story, question and answer; with `rephrase`, verbs and sentence openings vary too. Returns the
    new story and every answer form it names (the labels a reply must not hedge between)."""

    split: str = "unseen"
    rephrase: bool = False
    keep_babi: float = 0.0

    def __call__(self, facts: list[str], question: str, answer: str, rng: random.Random
                 ) -> tuple[list[str], str, str, tuple[str, ...]]:
        mapping = {} if rng.random() < self.keep_babi else self._mapping(rng)

        def rename(text: str) -> str:
            text = _PEOPLE.sub(lambda m: mapping.get(m.group(1), m.group(1)), text)
            for pattern in (_PLACES, _OBJECTS):
                text = pattern.sub(lambda m: _with_article(m.group(1), mapping.get(m.group(2), f"the {m.group(2)}")),
                                   text)
            return text

        story = [rename(fact) for fact in facts]
        if self.rephrase:
            story = [_rephrase(fact, rng) for fact in story]
        answers = {original: answer_form(new) for original, new in mapping.items()}
        labels = tuple(sorted({answer_form(value) for value in mapping.values()}))
        return story, rename(question), answers.get(answer, answer), labels

    def _mapping(self, rng: random.Random) -> dict[str, str]:
        chosen = cast(self.split)
        mapping: dict[str, str] = {}
        taken: set[str] = set()

        def fresh(draw) -> str:
            while True:
                value = draw()
                # No two entities share a word ("Anna" and "Anna Berg", "garden" and "the Berg Garden"
                # would read alike, and a reply naming one would name the other).
                words = {word.casefold() for word in value.split()} - _SHARED_WORDS
                if not words & taken:
                    taken.update(words)
                    return value

        for name in (*BABI_FEMALE, *BABI_MALE):
            gender = "female" if name in BABI_FEMALE else "male"
            mapping[name] = fresh(lambda gender=gender: chosen.person(rng, gender))
        for place in BABI_PLACES:
            mapping[place] = fresh(lambda: chosen.place(rng))
        for thing in BABI_OBJECTS:
            mapping[thing] = fresh(lambda: chosen.thing(rng))
        return mapping


_SHARED_WORDS = {"the", *(title.casefold() for title in TITLES)}


def _with_article(article: str, phrase: str) -> str:
    """`phrase` where bAbI wrote "the"/"The" + noun: keeps a sentence-initial capital."""
    return phrase[0].upper() + phrase[1:] if article == "The" else phrase


def _rephrase(fact: str, rng: random.Random) -> str:
    """Another verb for the fact's action and, sometimes, a time phrase before it (never before a map
    relation: "Later, the hall is north of the cellar" would make geography an event)."""
    for pattern, alternatives in PHRASINGS:
        varied = pattern.sub(lambda _m, options=alternatives: rng.choice(options), fact, count=1)
        if varied != fact or pattern.search(fact):
            return rng.choice(OPENERS) + varied
    return fact


# --- haystack sentences that look like facts about other people -----------------------------------
_DISTRACTORS = (
    "{p} wrote a long letter about {t}.", "Nobody at {l} had ever heard of {p}.", "{p} was born in {c}.",
    "{p} once said that {l} was far too cold in winter.", "{p} used to go to {l} every summer.",
    "{p} and {q} argued about {t} for an hour.", "{p} thought about moving to {c} one day.",
    "According to {p}, {t} belonged in {l}.", "{p} would have gone to {l} if it had not rained.",
    "There is an old painting of {t} in {l}.", "The sister of {p} lives near {l}.",
    "In {c}, {p} sold {t} to a stranger.", "{p} dreamed of {l} and of {t}.",
    "Years ago {p} and {q} met at {l}.", "{p} asked {q} whether {t} was still in {c}.",
    "A photograph of {l} hung above the desk of {p}.", "{p} had lost {t} somewhere in {c} as a child.",
    "The newspaper in {c} wrote about {p}.", "{p} laughed when {q} mentioned {l}.",
    "Some say that {p} hid {t} under the floor of {l}, but nobody believes it.",
    "{p} remembered the smell of {l}.", "{q} told {p} a story about {t}.",
    "Every winter the road to {c} was closed for weeks.", "{p} planned to visit {l} next year.",
)


def distractor_text(split: str = "train", sentences: int = 30_000, seed: int = 0) -> str:
    """A haystack genre of sentences about `split`'s people, places and objects that state no event a
    question asks about (no one moves, takes or hands over anything now): a memory that keeps every
    sentence naming a person fills up with them; one that keeps the events does not."""
    chosen, rng = cast(split), random.Random(f"cast/distractors/{split}/{seed}")
    lines = []
    for _ in range(sentences):
        gender = rng.choice(("female", "male"))
        line = rng.choice(_DISTRACTORS).format(
            p=chosen.person(rng, gender), q=chosen.person(rng, rng.choice(("female", "male"))),
            l=chosen.place(rng), c=rng.choice(chosen.cities), t=chosen.thing(rng))
        lines.append(line[0].upper() + line[1:])
    return " ".join(lines)
