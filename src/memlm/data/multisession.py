"""Multi-session recall: synthetic users state facts about themselves across many chat sessions,
among real small talk; at the end they ask about those facts.

Each user gets `n_sessions` sessions (default 20). Session *i* holds `filler_turns` exchanges of
real chit-chat (from the `chitchat-dataset` package: 7,168 human conversations; a small built-in
list when it is not installed) with one fact statement placed among them ("By the way, my dog is
called Biscuit."). After the last session the user asks one paraphrased question per fact ("What's
the name of my dog?"). Answers are made-up or uncommon values, so a model cannot guess them.

Deterministic by seed.

Example:
    >>> users = generate(n_users=2, n_sessions=20, seed=0)
    >>> users[0].questions[0].question, users[0].questions[0].answer
    ('What is the name of my dog?', 'Biscuit')
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# attribute: (statement templates, question templates, values). Values are single tokens of text
# that small models do not produce by chance.
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "dog": (("By the way, my dog is called {}.", "Oh, my dog's name is {}."),
            ("What is the name of my dog?", "What's my dog called?"),
            ("Biscuit", "Nimbus", "Waffles", "Pickle", "Zephyr", "Mochi", "Tofu", "Juniper")),
    "city": (("I live in {} these days.", "I moved to {} last year."),
             ("Which city do I live in?", "Where do I live now?"),
             ("Tallinn", "Ljubljana", "Valparaiso", "Trondheim", "Bratislava", "Montevideo", "Reykjavik", "Porto")),
    "job": (("I work as a {}.", "I'm a {} by trade, actually."),
            ("What do I do for a living?", "What is my job?"),
            ("glassblower", "cartographer", "beekeeper", "locksmith", "taxidermist", "luthier", "sommelier",
             "archivist")),
    "food": (("My favourite food is {}.", "I could eat {} every day, it's my favourite food."),
             ("What is my favourite food?", "Which food do I like most?"),
             ("shakshuka", "pierogi", "okonomiyaki", "moussaka", "feijoada", "bibimbap", "goulash", "ceviche")),
    "colour": (("My favourite colour is {}.", "I love the colour {}, it's my favourite."),
               ("What is my favourite colour?", "Which colour do I like best?"),
               ("teal", "maroon", "ochre", "lavender", "chartreuse", "turquoise", "crimson", "amber")),
    "instrument": (("I play the {}.", "I've been learning the {} for years."),
                   ("Which instrument do I play?", "What instrument am I learning?"),
                   ("oboe", "cello", "banjo", "harp", "bassoon", "ukulele", "accordion", "sitar")),
    "sister": (("My sister's name is {}.", "My sister {} is visiting soon."),
               ("What is my sister's name?", "What's my sister called?"),
               ("Ingrid", "Marisol", "Theodora", "Anouk", "Priya", "Svetlana", "Ottilie", "Yumiko")),
    "car": (("I drive a {}.", "My car is a {}."),
            ("What car do I drive?", "Which car brand do I have?"),
            ("Skoda", "Subaru", "Peugeot", "Volvo", "Fiat", "Mazda", "Citroen", "Saab")),
    "sport": (("I play {} every weekend.", "My favourite sport is {}."),
              ("What sport do I play?", "Which sport is my favourite?"),
              ("squash", "curling", "lacrosse", "handball", "badminton", "fencing", "rugby", "polo")),
    "drink": (("My favourite drink is {}.", "I always order {} when I go out."),
              ("What is my favourite drink?", "What do I usually order to drink?"),
              ("kombucha", "horchata", "lemonade", "matcha", "kefir", "sangria", "cider", "espresso")),
    "cat": (("My cat is called {}.", "I have a cat named {}."),
            ("What is my cat's name?", "What's the name of my cat?"),
            ("Pixel", "Saffron", "Gizmo", "Clementine", "Noodle", "Pepper", "Ziggy", "Marmalade")),
    "language": (("I'm learning {} at the moment.", "I speak {} at home."),
                 ("Which language am I learning?", "What language do I speak at home?"),
                 ("Icelandic", "Swahili", "Finnish", "Tagalog", "Basque", "Hungarian", "Welsh", "Esperanto")),
    "hobby": (("My hobby is {}.", "In my free time I do {}."),
              ("What is my hobby?", "What do I do in my free time?"),
              ("origami", "birdwatching", "calligraphy", "pottery", "geocaching", "knitting", "archery",
               "juggling")),
    "book": (("My favourite author is {}.", "I'm reading everything by {} right now."),
             ("Who is my favourite author?", "Which author am I reading?"),
             ("Tolstoy", "Murakami", "Borges", "Austen", "Calvino", "Achebe", "Lem", "Atwood")),
    "allergy": (("I'm allergic to {}.", "I have an allergy to {}."),
                ("What am I allergic to?", "What is my allergy?"),
                ("peanuts", "shellfish", "penicillin", "pollen", "sesame", "latex", "kiwi", "mustard")),
    "month": (("My birthday is in {}.", "I was born in {}."),
              ("In which month is my birthday?", "When is my birthday?"),
              ("January", "March", "April", "June", "August", "September", "October", "December")),
    "season": (("My favourite season is {}.", "I like {} best of all the seasons."),
               ("What is my favourite season?", "Which season do I like best?"),
               ("winter", "spring", "summer", "autumn", "winter", "spring", "summer", "autumn")),
    "team": (("I support {} football club.", "My team is {}, I never miss a match."),
             ("Which football team do I support?", "What is my team?"),
             ("Benfica", "Ajax", "Celtic", "Boca", "Galatasaray", "Feyenoord", "Anderlecht", "Porto")),
    "plant": (("I grow {} on my balcony.", "My balcony is full of {}."),
              ("What do I grow on my balcony?", "What plants are on my balcony?"),
              ("orchids", "tomatoes", "basil", "succulents", "ferns", "geraniums", "chillies", "lavender")),
    "game": (("My favourite board game is {}.", "I play {} with friends every Friday."),
             ("What is my favourite board game?", "Which board game do I play with friends?"),
             ("Catan", "Carcassonne", "Azul", "Scrabble", "Go", "Backgammon", "Dominion", "Wingspan")),
}

FALLBACK_FILLER = (
    ("How was your day?", "Pretty good, thanks for asking."),
    ("The weather is lovely today.", "It really is, perfect for a walk."),
    ("Did you watch anything good lately?", "A documentary about the ocean, it was great."),
    ("I'm a bit tired this evening.", "Get some rest, tomorrow is another day."),
    ("Any plans for the weekend?", "Maybe a short trip to the countryside."),
    ("That's funny, haha.", "Glad it made you laugh."),
)
ACKNOWLEDGEMENTS = ("Good to know!", "Thanks for telling me.", "Nice!", "Noted, that's interesting.",
                    "Oh, cool.", "I'll keep that in mind.")


@dataclass(frozen=True)
class Question:
    attribute: str
    question: str
    answer: str
    session: int  # where the fact was stated (0-based)
    statement: str


@dataclass(frozen=True)
class UserHistory:
    user: str
    sessions: tuple[tuple[tuple[str, str], ...], ...]  # per session: (user message, assistant reply) pairs
    questions: tuple[Question, ...]


@lru_cache(maxsize=1)
def chitchat_exchanges() -> tuple[tuple[str, str], ...]:
    """(message, reply) pairs from the chitchat-dataset package, or a built-in list without it."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        return FALLBACK_FILLER
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
    conversations = json.loads(path.read_text(encoding="utf-8"))
    pairs = []
    for key in sorted(conversations):
        turns = [" ".join(part["text"] for part in message).strip() for message in conversations[key]["messages"]]
        for first, second in zip(turns[::2], turns[1::2], strict=False):
            if 8 <= len(first) <= 200 and 2 <= len(second) <= 200:
                pairs.append((first, second))
    return tuple(pairs) or FALLBACK_FILLER


def generate(n_users: int = 5, n_sessions: int = 20, filler_turns: int = 4, seed: int = 0,
             filler: tuple[tuple[str, str], ...] | None = None) -> list[UserHistory]:
    """`n_users` users, each stating one fact per session (up to one per attribute)."""
    if not 1 <= n_sessions <= len(ATTRIBUTES):
        raise ValueError(f"n_sessions must be within 1..{len(ATTRIBUTES)} (one fact per session)")
    exchanges = filler if filler is not None else chitchat_exchanges()
    histories = []
    for user_index in range(n_users):
        rng = random.Random(f"multisession/{seed}/{user_index}")
        attributes = rng.sample(sorted(ATTRIBUTES), n_sessions)
        sessions, questions = [], []
        for session_index, attribute in enumerate(attributes):
            statements, question_templates, values = ATTRIBUTES[attribute]
            value = rng.choice(values)
            statement = rng.choice(statements).format(value)
            turns = [rng.choice(exchanges) for _ in range(filler_turns)]
            turns.insert(rng.randint(0, filler_turns), (statement, rng.choice(ACKNOWLEDGEMENTS)))
            sessions.append(tuple(turns))
            questions.append(Question(attribute, rng.choice(question_templates), value, session_index, statement))
        histories.append(UserHistory(f"user{user_index:03d}", tuple(sessions), tuple(questions)))
    return histories
