"""The words of the bAbI tasks: their cast (people, rooms, objects), the sentence templates the story
writer uses, and the BABILong instructions. Other casts: `memlm.data.cast`."""

from __future__ import annotations

PEOPLE = ("Mary", "John", "Sandra", "Daniel")
GIVERS = ("Fred", "Bill", "Jeff", "Mary")  # bAbI qa5 has its own cast
LOCATIONS = ("kitchen", "hallway", "bathroom", "garden", "office", "bedroom")
OBJECTS = ("football", "apple", "milk")
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

# Every answer of a task is one of its labels; BABILong scoring can reject outputs naming several.
LABELS = {"qa1": LOCATIONS, "qa2": LOCATIONS, "qa3": LOCATIONS, "qa4": LOCATIONS, "qa5": GIVERS + OBJECTS}

MOVES = ("{p} moved to the {l}.", "{p} went to the {l}.", "{p} journeyed to the {l}.", "{p} travelled to the {l}.",
          "{p} went back to the {l}.")
PICKS = ("{p} picked up the {o}.", "{p} got the {o} there.", "{p} grabbed the {o} there.", "{p} took the {o} there.")
DROPS = ("{p} dropped the {o}.", "{p} discarded the {o}.", "{p} put down the {o}.", "{p} left the {o} there.")
GIVES = ("{g} gave the {o} to {r}.", "{g} handed the {o} to {r}.", "{g} passed the {o} to {r}.")

# (fewest, most) story sentences. The floors are the shortest stories that can carry the question
# with at least one distractor; qa4 has six rooms, so at most five relations fit on one map.
STORY_SIZES = {"qa1": (2, 10), "qa2": (3, 10), "qa3": (4, 10), "qa4": (2, 5), "qa5": (4, 10)}
# Relative odds of each kind of action when a story is written.
ACTION_WEIGHTS = {
    "qa1": {"move": 1.0},
    "qa2": {"move": 4.0, "pick": 3.0, "drop": 1.0},
    "qa3": {"move": 5.0, "pick": 3.0, "drop": 0.5},
    "qa5": {"move": 3.0, "pick": 2.0, "drop": 0.5, "give": 4.0},
}

PROMPT = (
    "I will give you context with the facts about positions of different persons hidden in some random text "
    "and a question. You need to answer the question based only on the information from the facts."
)
ACTIONS_PROMPT = (
    "I will give you context with the facts about locations and actions of different persons hidden in some "
    "random text and a question. You need to answer the question based only on the information from the facts. "
    "If a person got an item in the first location and travelled to the second location the item is also in the "
    "second location. If a person dropped an item in the first location and moved to the second location the "
    "item remains in the first location."
)
INSTRUCTIONS = {
    "qa1": PROMPT + " If a person was in different locations, use the latest location to answer the question.",
    "qa2": ACTIONS_PROMPT,
    "qa3": ACTIONS_PROMPT + " The question asks where the item was just before it was taken to the named location.",
    "qa4": (
        "I will give you context with the facts about different locations and their relations hidden in some "
        "random text and a question. You need to answer the question based only on the information from the facts."
    ),
    "qa5": (
        "I will give you context with the facts about locations and actions of different persons hidden in some "
        "random text and a question. You need to answer the question based only on the information from the facts. "
        "If a person gave an item to another person, the other person now has the item."
    ),
}
ANSWER_FORMAT = "Answer with a single word."


