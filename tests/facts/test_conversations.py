"""Conversation turns stored as they are (`infer=False`) are found by what they answer, by who said
them and by the run they belong to (docs/bank.md, "Real conversations")."""

from __future__ import annotations

from helpers import words_memory


def _say(memory, name, text, run="s1", user="pair"):
    return memory.add([{"role": "user", "name": name, "content": text}], user_id=user, infer=False,
                      run_id=run)["results"][0]


def test_a_reply_is_found_by_the_words_of_the_message_it_answers():
    memory = words_memory()
    _say(memory, "Ana", "Have you ever been to Lisbon?")
    reply = _say(memory, "Ben", "Yes, twice, it was lovely.")  # a separate add: the run links them
    _say(memory, "Ana", "I bought new running shoes.", run="s2")
    found = memory.search("Ben Lisbon trip", user_id="pair", top_k=2)["results"]
    assert reply["id"] in [r["id"] for r in found]
    answer = next(r for r in found if r["id"] == reply["id"])
    assert answer["lexical"] > 0 and answer["memory"] == "Yes, twice, it was lovely."  # the text stays the message
    assert answer["context"] == "Ana: Have you ever been to Lisbon? Ben:" and answer["source"] == \
        "Ben: Yes, twice, it was lovely."


def test_who_said_it_is_searchable():
    memory = words_memory()
    _say(memory, "Maya", "We adopted a puppy last week.")
    clara = _say(memory, "Clara", "We adopted a puppy last month.", run="s2")
    found = memory.search("What did Clara adopt?", user_id="pair", top_k=1)["results"]
    assert [r["id"] for r in found] == [clara["id"]]


def test_a_turn_shares_in_its_runs_best_match():
    memory = words_memory()
    other = _say(memory, None, "rainy weather today garden", run="r2")  # older: wins a tie by id
    same_run = _say(memory, None, "sunny weather today garden", run="r1")
    _say(memory, None, "ripe tomatoes in the garden beds tomatoes", run="r1")
    ranked = [r["id"] for r in memory.search("garden tomatoes", user_id="pair")["results"]]
    assert ranked.index(same_run["id"]) < ranked.index(other["id"])


def test_turns_without_a_run_or_name_keep_no_context():
    memory = words_memory()
    first = memory.add("The boiler was serviced in May.", user_id="house", infer=False)["results"][0]
    second = memory.add("The roof needs new tiles.", user_id="house", infer=False)["results"][0]
    assert memory.get(first["id"])["context"] is None and memory.get(second["id"])["context"] is None
