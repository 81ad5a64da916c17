"""Chat turns for training the `chat` preset: the prompt `memlm chat` builds (the bank's retrieved
facts fused by `memlm.fusion.fuse_facts`, then the user's message) and the reply a person would give.

Kinds of turns (`KINDS`):

* `answer` — the user asks about something they told earlier; the facts listed hold it among
  distractors (their other facts, facts about a *similar* relation: sister vs brother, and chit-chat
  sentences the bank extracted as facts). Reply: that one fact, to the user ("Your dog is called
  Rollo."), and stop.
* `unknown` — the user asks about something never told; the facts listed are the nearest the bank
  found, about something else. Reply: "I don't know ..." naming what was not told, in varied words.
* `tell` — the user states a fact; the reply acknowledges it, repeating it at most, inventing nothing.
* `chitchat` — small talk from `chitchat-dataset` (its training half), with facts listed anyway
  (retrieval finds some for any message). Reply: the human reply, short.
* `other` — facts about other people (continual learning: "Aurel Brandt's lucky number is 312."),
  sometimes after a stream of other such facts in the message; asked about one of them, or about one
  never stated ("I don't know").

Vocabularies are disjoint from the evaluation's: people and cities from the training split of
`memlm.data.cast` (Faker names hashed into train/unseen), other values from lists here with every
value the evaluation draws (`memlm.data.multisession.ATTRIBUTES`, `memlm.data.continual_facts.RELATIONS`)
removed; chit-chat conversations split by a hash of their id (`chitchat_split`). Statement and question
templates are the project's own here, never the evaluation's strings (tested).

Deterministic by seed.

Example:
    >>> turn = generate(1, seed=3)[0]
    >>> turn.messages[-1]["role"], bool(turn.reply)
    ('user', True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from memlm.data import continual_facts, multisession
from memlm.facts.extraction import extract_facts, second_person
from memlm.fusion import fuse_facts

KINDS = ("answer", "unknown", "tell", "chitchat", "other")
DEFAULT_MIX = {"answer": 0.34, "unknown": 0.2, "tell": 0.12, "chitchat": 0.12, "other": 0.22}
IDK_PATTERN = re.compile(r"\b(?:don't|do not|dont) know\b|\bhaven't (?:told|mentioned)|\bnever (?:told|mentioned)",
                         re.IGNORECASE)


@dataclass(frozen=True)
class Attribute:
    """Something a user may tell about themselves: first-person statements ({} = value), questions
    about it, what it is when it was never told ("your brother's name"), its values, and a family
    of similar attributes (sister / brother / ...) that make the hardest distractors."""

    statements: tuple[str, ...]
    questions: tuple[str, ...]
    what: str
    values: tuple[str, ...]
    family: str = ""


def _names(kind: str) -> tuple[str, ...]:
    from memlm.data.cast import cast

    chosen = cast("train")
    if kind == "city":
        return chosen.cities
    return chosen.female if kind == "female" else chosen.male


_PET_NAMES = ("Rollo", "Fudge", "Bramble", "Sprout", "Pumpkin", "Domino", "Bingo", "Rascal", "Maple", "Truffle",
              "Scout", "Luna", "Olive", "Bean", "Nugget", "Jasper", "Cosmo", "Hazel", "Winston", "Frodo", "Basil",
              "Pebbles", "Oreo", "Kiki", "Tango", "Rufus", "Daisy", "Milo", "Sushi", "Chester", "Poppy", "Dotty")
_PEOPLE_ATTRIBUTES = {
    "sister": ("female", "sister", "siblings"), "brother": ("male", "brother", "siblings"),
    "mother": ("female", "mother", "parents"), "father": ("male", "father", "parents"),
    "daughter": ("female", "daughter", "children"), "son": ("male", "son", "children"),
    "wife": ("female", "wife", "partner"), "husband": ("male", "husband", "partner"),
    "best_friend": ("female", "best friend", "friends"), "boss": ("male", "boss", "work_people"),
    "neighbour": ("female", "neighbour", "friends"), "grandmother": ("female", "grandmother", "parents"),
}
_PETS = {"dog": "pets", "cat": "pets", "rabbit": "pets", "parrot": "pets", "horse": "pets", "hamster": "pets"}

_VALUE_LISTS: dict[str, tuple[str, ...]] = {
    "job": ("nurse", "welder", "paramedic", "architect", "barista", "farmer", "electrician", "journalist",
            "veterinarian", "pharmacist", "mechanic", "teacher", "firefighter", "photographer", "chef",
            "accountant", "gardener", "zookeeper", "lawyer", "radiologist", "bookbinder", "blacksmith",
            "stonemason", "animator", "midwife", "geologist", "composer", "cobbler"),
    "food": ("lasagne", "ramen", "paella", "falafel", "risotto", "tacos", "sushi", "dumplings", "curry",
             "pho", "biryani", "empanadas", "gnocchi", "borscht", "kimchi", "tagine", "pad thai", "laksa",
             "ratatouille", "jambalaya", "gumbo", "tortellini", "croquettes", "haggis"),
    "colour": ("magenta", "indigo", "olive", "navy", "coral", "mustard", "burgundy", "cobalt", "scarlet",
               "mint", "peach", "violet", "saffron", "jade", "cerulean", "rust", "emerald", "plum"),
    "instrument": ("piano", "saxophone", "tuba", "mandolin", "drums", "bagpipes", "piccolo", "xylophone",
                   "double bass", "french horn", "viola", "lute", "zither", "marimba", "didgeridoo", "bouzouki"),
    "car": ("Toyota", "Honda", "Renault", "Hyundai", "Kia", "Nissan", "Ford", "Chevrolet", "Tesla", "Audi",
            "Lancia", "Dacia", "Opel", "Seat", "Jaguar", "Suzuki", "Mitsubishi", "Lexus", "Alfa Romeo", "Mini"),
    "sport": ("tennis", "volleyball", "cricket", "hockey", "rowing", "judo", "karate", "netball", "basketball",
              "baseball", "golf", "water polo", "table tennis", "softball", "kayaking", "bouldering", "surfing"),
    "drink": ("ginger beer", "hot chocolate", "iced tea", "mango lassi", "oolong tea", "root beer", "bubble tea",
              "sparkling water", "cold brew", "rooibos", "cappuccino", "mulled wine", "orange juice", "latte"),
    "language": ("Italian", "Japanese", "Polish", "Arabic", "Norwegian", "Czech", "Vietnamese", "Romanian",
                 "Hindi", "Thai", "Croatian", "Latvian", "Danish", "Mandarin", "Persian", "Maltese", "Zulu"),
    "hobby": ("woodcarving", "beekeeping", "baking", "embroidery", "stargazing", "painting", "fishing",
              "quilting", "mountain biking", "scrapbooking", "rock climbing", "photography", "model trains",
              "crosswords", "sculpting", "foraging", "kite flying", "sewing", "bird ringing", "candle making"),
    "author": ("Dickens", "Orwell", "Woolf", "Hemingway", "Tolkien", "Pratchett", "Le Guin", "Morrison",
               "Nabokov", "Kafka", "Christie", "Steinbeck", "Bronte", "Chekhov", "Zola", "Rushdie", "Mantel"),
    "allergy": ("cats", "dust", "eggs", "wheat", "soy", "strawberries", "bee stings", "walnuts", "milk",
                "aspirin", "tomatoes", "celery", "garlic", "oats"),
    "month": ("February", "May", "July", "November"),
    "team": ("Arsenal", "Juventus", "Lazio", "Sevilla", "Napoli", "Valencia", "Everton", "Olympiacos", "Rangers",
             "Monaco", "Lyon", "Sporting", "Dortmund", "Besiktas", "Fenerbahce", "Palmeiras", "Flamengo"),
    "plant": ("roses", "sunflowers", "mint", "strawberries", "cacti", "bonsai trees", "peppers", "lettuce",
              "thyme", "rosemary", "begonias", "petunias", "cucumbers", "aloe vera", "bamboo", "ivy"),
    "game": ("Monopoly", "Cluedo", "Risk", "Ticket to Ride", "Pandemic", "Codenames", "Mahjong", "Othello",
             "Checkers", "Battleship", "Trivial Pursuit", "Splendor", "Agricola", "Patchwork", "Boggle"),
    "movie": ("Casablanca", "Jaws", "Amelie", "Alien", "Vertigo", "Titanic", "Inception", "Paddington",
              "Fargo", "Rocky", "Gravity", "Arrival", "Up", "Heat", "Psycho", "Memento", "Ratatouille"),
    "band": ("ABBA", "Queen", "Radiohead", "Coldplay", "Metallica", "Blondie", "Oasis", "Nirvana", "Muse",
             "Genesis", "Pixies", "Portishead", "Bjork", "Kraftwerk", "Motorhead", "Madness"),
    "subject": ("history", "chemistry", "geography", "biology", "physics", "economics", "philosophy", "algebra",
                "astronomy", "linguistics", "sociology", "art history", "statistics"),
    "dessert": ("tiramisu", "cheesecake", "baklava", "flan", "brownies", "apple crumble", "pavlova", "cannoli",
                "churros", "eclairs", "trifle", "panna cotta", "mochi ice cream", "gelato"),
    "country_visit": ("Peru", "Japan", "Morocco", "Iceland", "Vietnam", "Chile", "Egypt", "Canada", "Nepal",
                      "Kenya", "Mexico", "Norway", "Greece", "Jordan", "Cuba", "Scotland", "Bhutan"),
    "street": ("Elm Street", "Baker Street", "Mill Lane", "Church Road", "Station Road", "Park Avenue",
               "Victoria Street", "Kings Road", "Harbour Lane", "Orchard Close", "Maple Drive", "High Street"),
    "degree": ("law", "nursing", "engineering", "medicine", "architecture", "music", "design", "psychology",
               "computer science", "agriculture", "journalism", "veterinary science"),
}


def _attributes() -> dict[str, Attribute]:
    people = {}
    for name, (gender, noun, family) in _PEOPLE_ATTRIBUTES.items():
        people[name] = Attribute(
            (f"My {noun}'s name is {{}}.", f"My {noun} is called {{}}.", f"Oh, my {noun} {{}} came over yesterday.",
             f"I had lunch with my {noun}, {{}}, today.", f"Remember that my {noun} is {{}}."),
            (f"What's my {noun}'s name?", f"Do you remember what my {noun} is called?",
             f"Who is my {noun}?", f"Can you tell me my {noun}'s name?", f"What is the name of my {noun}?"),
            f"your {noun}'s name", _names(gender), family)
    for pet, family in _PETS.items():
        people[pet] = Attribute(
            (f"My {pet} is named {{}}.", f"I have a {pet} called {{}}.", f"Our {pet}'s name is {{}}.",
             f"We adopted a {pet} and named it {{}}."),
            (f"What's my {pet}'s name?", f"Do you remember my {pet}'s name?", f"What did I name my {pet}?",
             f"How is my {pet} called?"),
            f"your {pet}'s name", _PET_NAMES, family)
    city = Attribute(("I live in {} now.", "I just moved to {}.", "My home is in {}.", "I grew up in {}."),
                     ("Where do I live?", "Which city is my home?", "Do you remember where I live?",
                      "What city am I in?"),
                     "where you live", _names("city"), "places")
    simple = {
        "job": (("I'm a {}.", "I work as a {} now.", "My job? I'm a {}.", "I've been a {} for ten years."),
                ("What's my job?", "What do I work as?", "Do you remember my profession?",
                 "What is my occupation?"), "what you do for a living", "work"),
        "food": (("I love {} more than any other food.", "My favourite dish is {}.", "I could live on {}."),
                 ("What's my favourite dish?", "What food do I love most?", "Which dish is my favourite?"),
                 "your favourite food", "tastes"),
        "dessert": (("My favourite dessert is {}.", "I never say no to {} for dessert."),
                    ("What's my favourite dessert?", "Which dessert do I like best?"),
                    "your favourite dessert", "tastes"),
        "colour": (("My favourite colour is {}.", "I like {} best of all colours.",
                    "I painted my room {}, my favourite colour."),
                   ("What's my favourite colour?", "What colour do I like best?", "Which colour is my favourite?"),
                   "your favourite colour", "tastes"),
        "instrument": (("I play the {}.", "I'm taking {} lessons.", "I practise the {} every evening."),
                       ("What instrument do I play?", "Which instrument am I practising?",
                        "Do you remember my instrument?"), "which instrument you play", "music"),
        "band": (("My favourite band is {}.", "I listen to {} all the time."),
                 ("What's my favourite band?", "Which band do I listen to most?"), "your favourite band", "music"),
        "car": (("I drive a {}.", "I just bought a {}.", "My car is an old {}."),
                ("What car do I have?", "What do I drive?", "Which car did I buy?"), "what car you drive",
                "things"),
        "sport": (("I play {} on Sundays.", "I've been doing {} since school.", "My sport is {}."),
                  ("What sport do I do?", "Which sport do I play?", "What's my sport?"), "which sport you play",
                  "leisure"),
        "hobby": (("My hobby is {}.", "I spend my weekends on {}.", "I'm really into {} lately."),
                  ("What's my hobby?", "What am I into lately?", "How do I spend my weekends?"),
                  "your hobby", "leisure"),
        "drink": (("My favourite drink is {}.", "I always have {} in the afternoon.", "I drink {} with every meal."),
                  ("What's my favourite drink?", "What do I drink in the afternoon?", "Which drink do I like?"),
                  "your favourite drink", "tastes"),
        "language": (("I'm learning {}.", "I speak {} with my grandparents.", "I take {} classes."),
                     ("What language am I learning?", "Which language do I speak with my grandparents?",
                      "What language classes do I take?"), "which language you're learning", "learning"),
        "author": (("My favourite writer is {}.", "I've read every book by {}."),
                   ("Who's my favourite writer?", "Which writer have I read everything by?"),
                   "your favourite writer", "tastes"),
        "allergy": (("I'm allergic to {}.", "I can't have {}, I'm allergic.", "I react badly to {}, it's an allergy."),
                    ("What am I allergic to?", "Do I have any allergies?", "What allergy do I have?"),
                    "what you're allergic to", "health"),
        "month": (("My birthday falls in {}.", "I celebrate my birthday in {}."),
                  ("What month is my birthday?", "Which month do I celebrate my birthday in?"),
                  "when your birthday is", "dates"),
        "team": (("I support {}.", "I'm a big {} fan."), ("Which team do I support?", "What team am I a fan of?"),
                 "which team you support", "leisure"),
        "plant": (("I grow {} in my garden.", "My garden is full of {}."),
                  ("What do I grow in my garden?", "What's in my garden?"), "what you grow", "home"),
        "game": (("My favourite board game is {}.", "We play {} every weekend.", "I always win at {}."),
                 ("What board game do I like?", "Which game do we play every weekend?"),
                 "your favourite board game", "leisure"),
        "movie": (("My favourite film is {}.", "I've watched {} twenty times."),
                  ("What's my favourite film?", "Which film have I watched so often?", "What movie do I love?"),
                  "your favourite film", "tastes"),
        "subject": (("My favourite subject at school was {}.", "I teach {} part time."),
                    ("What was my favourite subject?", "What subject do I teach?"), "your favourite subject",
                    "learning"),
        "country_visit": (("Next summer I'm going to {}.", "I just got back from {}."),
                          ("Where am I going next summer?", "Where did I just travel to?"),
                          "where you're travelling", "places"),
        "street": (("I live on {}.", "My flat is on {}."), ("What street do I live on?", "Which street is my flat on?"),
                   "which street you live on", "places"),
        "degree": (("I studied {} at university.", "I have a degree in {}."),
                   ("What did I study?", "What's my degree in?"), "what you studied", "learning"),
    }
    table = dict(people)
    table["city"] = city
    for name, (statements, questions, what, family) in simple.items():
        table[name] = Attribute(statements, questions, what, _VALUE_LISTS[name], family)
    used = evaluation_strings()  # the evaluation's own sentences are never trained on
    return {name: dataclasses.replace(attribute, values=_disjoint(attribute.values),
                                      statements=tuple(t for t in attribute.statements if t not in used),
                                      questions=tuple(t for t in attribute.questions if t not in used))
            for name, attribute in table.items()}


@lru_cache(maxsize=1)
def evaluation_values() -> frozenset[str]:
    """Every value (answer) the evaluation's recall and continual tasks draw, casefolded."""
    values = {value for _, _, options in multisession.ATTRIBUTES.values() for value in options}
    values |= {answer for relation in continual_facts.RELATIONS.values() for answer in relation.answers}
    return frozenset(value.casefold() for value in values)


@lru_cache(maxsize=1)
def evaluation_strings() -> frozenset[str]:
    """Every statement and question template of the evaluation's recall and continual tasks."""
    strings = {text for statements, questions, _ in multisession.ATTRIBUTES.values()
               for text in (*statements, *questions)}
    strings |= {text for relation in continual_facts.RELATIONS.values()
                for text in (*relation.facts, *relation.questions)}
    return frozenset(strings)


def _disjoint(values: tuple[str, ...]) -> tuple[str, ...]:
    banned = evaluation_values()
    return tuple(v for v in values if v.casefold() not in banned and not (set(v.casefold().split()) & banned))


@lru_cache(maxsize=1)
def attributes() -> dict[str, Attribute]:
    return _attributes()


# --- facts about other people (continual learning) ------------------------------------------------
@dataclass(frozen=True)
class OtherRelation:
    facts: tuple[str, ...]  # {e} entity, {a} value
    questions: tuple[str, ...]
    answer: str  # the reply's sentence
    what: str  # "{e}'s favourite fruit", for "I don't know ..."
    values: tuple[str, ...]


def _other_relations() -> dict[str, OtherRelation]:
    years = tuple(str(y) for y in (*range(1900, 1948), *range(2006, 2024)))
    numbers = tuple(str(n) for n in range(100, 1000, 7))
    raw = {
        "fruit": (("{e} eats {a} every morning.", "{e} says {a} is the best fruit there is.",
                   "The fruit {e} buys most often is {a}."),
                  ("What fruit does {e} like best?", "Which fruit is {e}'s favourite?", "What fruit does {e} buy?"),
                  "{e}'s favourite fruit is {a}.", "{e}'s favourite fruit",
                  ("grapefruit", "pomegranate", "blueberry", "raspberry", "nectarine", "tangerine", "durian",
                   "persimmon", "passion fruit", "blackberry", "cranberry", "clementine", "starfruit", "rhubarb")),
        "city": (("{e} moved to {a} two years ago.", "{e} lives in {a}.", "{e} rents a house in {a}."),
                 ("Where does {e} live now?", "Which town is {e}'s home?", "In what city is {e}'s house?"),
                 "{e} lives in {a}.", "where {e} lives", _names("city")),
        "pet": (("{e} has a parrot called {a}.", "{e}'s hamster is named {a}.", "{e} walks a dog named {a}."),
                ("What is {e}'s pet called?", "What's the name of {e}'s animal?", "How is {e}'s pet named?"),
                "{e}'s pet is called {a}.", "the name of {e}'s pet", _PET_NAMES),
        "job": (("{e} is employed as a {a}.", "{e} has worked as a {a} for years.", "{e} trained to be a {a}."),
                ("What does {e} work as?", "What is {e}'s profession?", "What job does {e} have?"),
                "{e} works as a {a}.", "what {e} does for a living", _VALUE_LISTS["job"]),
        "instrument": (("{e} plays the {a} in a band.", "{e} practises the {a} daily."),
                       ("What does {e} play?", "Which instrument is {e} learning?", "What instrument does {e} play?"),
                       "{e} plays the {a}.", "which instrument {e} plays", _VALUE_LISTS["instrument"]),
        "year": (("{e} was born in the year {a}.", "{e}'s year of birth is {a}."),
                 ("What year was {e} born in?", "When is {e}'s year of birth?", "In which year was {e} born?"),
                 "{e} was born in {a}.", "when {e} was born", years),
        "car": (("{e} drives a {a}.", "{e} bought a {a} last spring."),
                ("What car does {e} drive?", "Which car did {e} buy?", "What is {e}'s car?"),
                "{e} drives a {a}.", "what car {e} drives", _VALUE_LISTS["car"]),
        "hobby": (("{e} loves {a}.", "On weekends {e} goes {a}.", "{e}'s pastime is {a}."),
                  ("What is {e}'s hobby?", "How does {e} spend weekends?", "What pastime does {e} have?"),
                  "{e}'s hobby is {a}.", "{e}'s hobby", _VALUE_LISTS["hobby"]),
        "language": (("{e} can speak {a}.", "{e} is studying {a}."),
                     ("What language does {e} speak?", "Which language is {e} studying?"),
                     "{e} speaks {a}.", "which languages {e} speaks", _VALUE_LISTS["language"]),
        "number": (("{e}'s favourite number is {a}.", "{e} always bets on {a}."),
                   ("What is {e}'s favourite number?", "Which number does {e} always bet on?"),
                   "{e}'s favourite number is {a}.", "{e}'s favourite number", numbers),
        "drink": (("{e} orders {a} at every cafe.", "{e}'s favourite drink is {a}."),
                  ("What drink does {e} order?", "Which drink does {e} like most?", "What does {e} like to drink?"),
                  "{e}'s favourite drink is {a}.", "{e}'s favourite drink", _VALUE_LISTS["drink"]),
        "flower": (("{e} grows {a} on the windowsill.", "{e}'s favourite flowers are {a}."),
                   ("Which flowers does {e} like?", "What flowers does {e} grow?", "What is {e}'s favourite flower?"),
                   "{e}'s favourite flowers are {a}.", "{e}'s favourite flower",
                   ("roses", "sunflowers", "carnations", "daffodils", "hyacinths", "camellias", "gardenias",
                    "azaleas", "bluebells", "freesias", "primroses", "snowdrops", "zinnias", "asters")),
        "team": (("{e} supports {a}.", "{e} never misses a {a} match."),
                 ("Which team does {e} support?", "What team is {e} a fan of?"),
                 "{e} supports {a}.", "which team {e} supports", _VALUE_LISTS["team"]),
        "food": (("{e}'s favourite dish is {a}.", "{e} cooks {a} every Friday."),
                 ("What dish does {e} like best?", "What does {e} cook on Fridays?", "What is {e}'s favourite food?"),
                 "{e}'s favourite dish is {a}.", "{e}'s favourite food", _VALUE_LISTS["food"]),
    }
    used = evaluation_strings()
    return {name: OtherRelation(tuple(f for f in facts if f not in used), tuple(q for q in questions if q not in used),
                                answer, what, _disjoint(values))
            for name, (facts, questions, answer, what, values) in raw.items()}


@lru_cache(maxsize=1)
def other_relations() -> dict[str, OtherRelation]:
    return _other_relations()


def _person(rng: random.Random) -> str:
    from memlm.data.cast import cast

    chosen = cast("train")
    return f"{rng.choice(chosen.female if rng.random() < 0.5 else chosen.male)} {rng.choice(chosen.surnames)}"


# --- chit-chat --------------------------------------------------------------------------------------
def chitchat_split(key: str) -> str:
    """Which half a chitchat-dataset conversation belongs to: "eval" for one in four (by a hash of its
    id), else "train"."""
    return "eval" if int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 4 == 0 else "train"


@lru_cache(maxsize=2)
def chitchat_pairs(split: str = "train") -> tuple[tuple[str, str], ...]:
    """(message, reply) pairs of the `split` half of chitchat-dataset, short replies only (the package
    must be installed: it is a dependency)."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("chat training needs the chitchat-dataset package: pip install chitchat-dataset")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
    conversations = json.loads(path.read_text(encoding="utf-8"))
    halves: dict[str, list[tuple[str, str]]] = {"train": [], "eval": []}
    for key in sorted(conversations):
        turns = [" ".join(part["text"] for part in message).strip() for message in conversations[key]["messages"]]
        for first, second in zip(turns, turns[1:], strict=False):
            if 8 <= len(first) <= 200 and 2 <= len(second.split()) <= 30 and "?" not in second[:-1]:
                halves[chitchat_split(key)].append((first, second))
    if split == "eval":
        return tuple(halves["eval"])
    held_out = set(halves["eval"])  # the same exchange in two conversations ("Hi, how are you?") stays out
    return tuple(pair for pair in halves["train"] if pair not in held_out)


# --- turns ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatTurn:
    """The fused messages as `memlm chat` sends them to the template, the reply to learn, and what
    the reply must hold (`answer`; "" for an acknowledgement or small talk)."""

    messages: tuple[dict[str, str], ...]
    reply: str
    kind: str
    answer: str = ""


_UNKNOWN = ("I don't know {what} — you haven't told me.", "You haven't told me {what}, so I don't know.",
            "I don't know {what}. You never mentioned it.", "Sorry, I don't know {what}; you haven't said.",
            "I'm afraid I don't know {what} — you haven't told me yet.", "I don't know. You haven't told me {what}.")
_UNKNOWN_OTHER = ("I don't know {what} — you haven't told me.", "You haven't told me {what}, so I don't know.",
                  "I don't know {what}; nobody mentioned it.", "Sorry, I don't know {what}.")
_ACK = ("Got it!", "Thanks for telling me.", "Good to know.", "Noted.", "Nice!", "Oh, lovely.", "I'll remember that.",
        "Thanks, I'll keep that in mind.", "That's great to hear.", "Okay, noted.")
_ACK_RESTATE = ("Got it: {fact}", "Noted — {fact_lower}", "Thanks! {fact}", "I'll remember that. {fact}")
_ANSWER_SUFFIXES = ("", "", "", "", " Answer briefly.", " Just tell me quickly.")


def _fact(statement: str) -> tuple[str, str]:
    """(third-person text, spoken sentence) as the bank stores a statement."""
    found = extract_facts(statement)
    if not found:
        raise ValueError(f"the bank extracts no fact from {statement!r}")
    return found[0].text, found[0].sentence


@lru_cache(maxsize=1)
def _chitchat_facts() -> tuple[tuple[str, str], ...]:
    """First-person chit-chat sentences the bank would store as facts (the distractors it retrieves)."""
    out = []
    for message, _ in chitchat_pairs("train")[:20000]:
        for fact in extract_facts(message):
            if 4 <= len(fact.sentence.split()) <= 20:
                out.append((fact.text, fact.sentence))
    return tuple(out)


class ChatTurnGenerator:
    """Draws `ChatTurn`s; `mix` weighs the kinds (default `DEFAULT_MIX`)."""

    def __init__(self, mix: dict[str, float] | None = None, max_facts: int = 5, max_stream: int = 40):
        self.mix = dict(mix or DEFAULT_MIX)
        unknown = set(self.mix) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown chat turn kind(s) {sorted(unknown)}; choose from {KINDS}")
        self.max_facts, self.max_stream = max_facts, max_stream
        self.attributes = attributes()
        self.others = other_relations()

    def turn(self, rng: random.Random) -> ChatTurn:
        kinds = sorted(self.mix)
        kind = rng.choices(kinds, weights=[self.mix[k] for k in kinds])[0]
        return getattr(self, f"_{kind}")(rng)

    # --- the user's own facts --------------------------------------------------------------------
    def _user_facts(self, rng: random.Random, count: int, exclude: set[str]) -> list[tuple[str, str, str, str]]:
        """(attribute, value, third-person text, spoken) for `count` attributes not in `exclude`."""
        names = [n for n in sorted(self.attributes) if n not in exclude]
        out = []
        for name in rng.sample(names, min(count, len(names))):
            attribute = self.attributes[name]
            value = rng.choice(attribute.values)
            text, spoken = _fact(rng.choice(attribute.statements).format(value))
            out.append((name, value, text, spoken))
        return out

    def _listed(self, rng: random.Random, target: tuple[str, str] | None, family_of: str | None,
                exclude: set[str]) -> list[tuple[str, str]]:
        """What retrieval lists, most relevant first: the target (first most of the time), facts of
        the same family, other facts, chit-chat the bank stored."""
        total = rng.randint(1 if target else 1, self.max_facts)
        family = [n for n in sorted(self.attributes) if n not in exclude and family_of
                  and self.attributes[n].family == self.attributes[family_of].family]
        similar = [f for f in self._user_facts(rng, len(family), set(self.attributes) - set(family))] if family else []
        rest = self._user_facts(rng, total, exclude | {f[0] for f in similar})
        distractors = [(t, s) for _, _, t, s in similar[:rng.randint(0, 2)]] + [(t, s) for _, _, t, s in rest]
        chatter = _chitchat_facts()
        for _ in range(rng.choice((0, 0, 1, 2))):
            distractors.insert(rng.randrange(len(distractors) + 1), rng.choice(chatter))
        if target is None:
            return distractors[:total]
        distractors = distractors[:max(0, total - 1)]
        position = 0 if rng.random() < 0.6 else rng.randint(0, len(distractors))
        distractors.insert(position, target)
        return distractors

    def _history(self, rng: random.Random) -> list[dict[str, str]]:
        history = []
        for _ in range(rng.choice((0, 0, 0, 0, 0, 1, 2))):
            message, reply = rng.choice(chitchat_pairs("train"))
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        return history

    def _fused(self, rng: random.Random, listed: list[tuple[str, str | None]], message: str
               ) -> tuple[dict[str, str], ...]:
        messages = [*self._history(rng), {"role": "user", "content": message}]
        texts = [text for text, _ in listed]
        addressed = [second_person(text, spoken) for text, spoken in listed]
        return tuple(fuse_facts(messages, texts, addressed))

    def _answer(self, rng: random.Random) -> ChatTurn:
        (name, value, text, spoken), = self._user_facts(rng, 1, set())
        listed = self._listed(rng, (text, spoken), name, {name})
        question = rng.choice(self.attributes[name].questions) + rng.choice(_ANSWER_SUFFIXES)
        return ChatTurn(self._fused(rng, listed, question), second_person(text, spoken), "answer", value)

    def _unknown(self, rng: random.Random) -> ChatTurn:
        name = rng.choice(sorted(self.attributes))
        attribute = self.attributes[name]
        # a new user has no facts at all: retrieval lists nothing and the template's own system prompt stays
        listed = self._listed(rng, None, name, {name}) if rng.random() > 0.15 else []
        question = rng.choice(attribute.questions) + rng.choice(_ANSWER_SUFFIXES)
        reply = rng.choice(_UNKNOWN).format(what=attribute.what)
        return ChatTurn(self._fused(rng, listed, question), reply[0].upper() + reply[1:], "unknown")

    def _tell(self, rng: random.Random) -> ChatTurn:
        (name, value, text, spoken), = self._user_facts(rng, 1, set())
        listed = self._listed(rng, None, name, {name})
        restated = second_person(text, spoken)
        if rng.random() < 0.5:
            reply = rng.choice(_ACK)
        else:
            reply = rng.choice(_ACK_RESTATE).format(fact=restated, fact_lower=restated[0].lower() + restated[1:])
        opener = rng.choice(("", "", "By the way, ", "Oh, ", "Just so you know, "))
        statement = opener + (spoken if spoken.startswith("I ") or not opener else spoken[0].lower() + spoken[1:])
        return ChatTurn(self._fused(rng, listed, statement), reply, "tell")

    def _chitchat(self, rng: random.Random) -> ChatTurn:
        message, reply = rng.choice(chitchat_pairs("train"))
        listed = self._listed(rng, None, None, set()) if rng.random() < 0.8 else []
        return ChatTurn(self._fused(rng, listed, message), reply, "chitchat")

    # --- other people ------------------------------------------------------------------------------
    def _other_fact(self, rng: random.Random, entity: str | None = None, relation: str | None = None
                    ) -> tuple[str, str, str, str]:
        relation = relation or rng.choice(sorted(self.others))
        spec = self.others[relation]
        entity = entity or _person(rng)
        value = rng.choice(spec.values)
        return relation, entity, value, rng.choice(spec.facts).format(e=entity, a=value)

    def _other(self, rng: random.Random) -> ChatTurn:
        relation, entity, value, fact = self._other_fact(rng)
        spec = self.others[relation]
        total = rng.randint(1, self.max_facts)
        # Distractors: the same person's other facts, other people's same relation, anything.
        same_person = [self._other_fact(rng, entity, r)[3]
                       for r in rng.sample([r for r in sorted(self.others) if r != relation], 2)]
        same_relation = [self._other_fact(rng, relation=relation)[3] for _ in range(2)]
        pool = same_person + same_relation + [self._other_fact(rng)[3] for _ in range(total)]
        rng.shuffle(pool)
        known = rng.random() < 0.75
        listed: list[tuple[str, str | None]] = [(f, None) for f in pool[:total - 1 if known else total]]
        if known:
            listed.insert(0 if rng.random() < 0.6 else rng.randint(0, len(listed)), (fact, None))
        question = rng.choice(spec.questions).format(e=entity) + rng.choice(_ANSWER_SUFFIXES)
        if rng.random() < 0.5:  # the evaluation's continual task puts the stream's tail in the message
            stream = [self._other_fact(rng)[3] for _ in range(rng.randint(1, self.max_stream))]
            if known and rng.random() < 0.3:
                stream.insert(rng.randrange(len(stream) + 1), fact)
            question = " ".join(stream) + "\n\n" + question
        if known:
            reply, answer = spec.answer.format(e=entity, a=value), value
        else:
            reply, answer = rng.choice(_UNKNOWN_OTHER).format(what=spec.what.format(e=entity)), ""
        return ChatTurn(self._fused(rng, listed, question), reply[0].upper() + reply[1:],
                        "other" if known else "unknown", answer)


def generate(n: int, seed: int = 0, mix: dict[str, float] | None = None, max_facts: int = 5,
             max_stream: int = 40) -> list[ChatTurn]:
    """`n` training turns, deterministic by seed."""
    generator = ChatTurnGenerator(mix, max_facts, max_stream)
    rng = random.Random(f"chat-turns/{seed}")
    return [generator.turn(rng) for _ in range(n)]
