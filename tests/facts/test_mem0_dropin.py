"""The mem0 behaviours that code written for mem0's `Memory` relies on, each as mem0's documentation
uses it (benchmarks/mem0_docs.py runs mem0's own snippets; these tests guard the same behaviours
without mem0's repository): a new user's search is empty, `Memory()` persists, metadata categories
filter, requests are not memories, `from_config`, `AsyncMemory`, agent-only memories, string ids."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from helpers import WORDS_DIM, words_embed, words_memory

import memlm
from memlm.facts import FactMemory
from memlm.paths import facts_path


def test_a_new_user_searches_lists_and_deletes_nothing():
    memory = words_memory()
    assert memory.search("What do you know about me?", filters={"user_id": "newcomer"}, top_k=3) == {"results": []}
    assert memory.get_all(user_id="newcomer") == {"results": []}
    assert memory.delete_all(user_id="newcomer")["deleted"] == 0
    assert memory.search("anything", agent_id="fresh-agent") == {"results": []}
    with pytest.raises(memlm.ConfigError, match="empty"):  # a bad query is still refused
        memory.search("   ", user_id="newcomer")


def test_memory_with_no_arguments_persists_across_instances():
    first = FactMemory(embed=words_embed, encoder="words", dimension=WORDS_DIM)
    first.add("I keep bees in my garden.", user_id="ada")
    first.close()
    assert facts_path().exists()  # <home>/facts.sqlite, the chat's file
    second = FactMemory(embed=words_embed, encoder="words", dimension=WORDS_DIM)
    remembered = [m["memory"] for m in second.get_all(user_id="ada")["results"]]
    assert remembered == ["The user keeps bees in the user's garden."]
    assert FactMemory(None, embed=words_embed, encoder="words", dimension=WORDS_DIM).get_all(user_id="ada") == \
        {"results": []}  # None still means in memory


def _shelf(memory):
    memory.add("I love sci-fi movies.", user_id="ada", metadata={"category": "movies"})
    memory.add("I like thrillers with twists.", user_id="ada", metadata={"category": "movies", "rating": 4})
    memory.add("I love fresh pasta.", user_id="ada", metadata={"category": "food", "categories": ["food", "italy"]})
    memory.add("I love the sea.", user_id="ada")  # no metadata: memlm's own category ("preference")


@pytest.mark.parametrize("filters, expected", [
    ({"category": "movies"}, {"sci-fi", "thrillers"}),
    ({"category": {"in": ["food", "movies"]}}, {"sci-fi", "thrillers", "pasta"}),
    ({"AND": [{"category": "movies"}, {"rating": {"gte": 4}}]}, {"thrillers"}),
    ({"OR": [{"category": "food"}, {"rating": 4}]}, {"thrillers", "pasta"}),
    ({"NOT": {"category": "movies"}}, {"pasta", "sea"}),
    ({"categories": {"contains": "italy"}}, {"pasta"}),
    ({"metadata": {"category": "food"}}, {"pasta"}),
    ({"category": "preference"}, {"sea"}),  # memlm's own category where the metadata names none
])
def test_metadata_categories_filter_as_in_mem0(filters, expected):
    memory = words_memory()
    _shelf(memory)
    words = {"sci-fi", "thrillers", "pasta", "sea"}

    def found(results):
        return {word for word in words for r in results if word in r["memory"]}

    assert found(memory.search("love movies pasta sea", filters={"user_id": "ada", **filters},
                               threshold=0)["results"]) == expected
    assert found(memory.get_all(filters={"user_id": "ada", **filters})["results"]) == expected


@pytest.mark.parametrize("request_text", [
    "Tell me about my bees.", "Please help me plan my trip to Rome", "Can you recommend a book for my son?",
    "Could you remind me what my sister is called?", "Show me my notes.",
])
def test_requests_to_the_assistant_are_not_memories(request_text):
    memory = words_memory()
    assert memory.add(request_text, user_id="ada") == {"results": []}


def test_only_what_the_user_says_becomes_their_memory():
    """mem0's README chat loop: the system prompt (with retrieved memories) and the reply go to add()."""
    memory = words_memory()
    messages = [{"role": "system", "content": "You are a helpful AI.\nUser Memories:\n- I am a pilot."},
                {"role": "user", "content": "I just adopted a cat called Miso. Any tips?"},
                {"role": "assistant", "content": "I love cats! I would buy a scratching post."}]
    added = memory.add(messages, user_id="ada")["results"]
    assert [r["memory"] for r in added] == ["The user just adopted a cat called Miso."]
    stored = memory.add(messages, user_id="bob", infer=False)["results"]  # as mem0: every message but the system's
    assert [r["role"] for r in stored] == ["user", "assistant"]


def test_grammar_of_third_person_facts():
    memory = words_memory()
    texts = [r["memory"] for r in memory.add("I told my friend about my bees. I think about Rome.",
                                             user_id="ada")["results"]]
    assert texts == ["The user told the user's friend about the user's bees.", "The user thinks about Rome."]


def test_an_agent_remembers_statements_about_the_world():
    memory = words_memory()
    added = memory.add("Ticket 42: the printer on floor 3 is on fire", agent_id="helpdesk")["results"]
    assert [r["memory"] for r in added] == ["Ticket 42: the printer on floor 3 is on fire."]
    found = memory.search("printer fire", agent_id="helpdesk")["results"]
    assert found and found[0]["agent_id"] == "helpdesk" and found[0]["user_id"] is None
    # for a user, a statement that is not about them stays out (it is not their memory)
    assert memory.add("The printer on floor 3 is on fire.", user_id="ada") == {"results": []}


def test_searching_an_agent_across_users_is_refused_with_the_reason():
    memory = words_memory()
    memory.add("I prefer window seats.", user_id="ada", agent_id="travel")
    with pytest.raises(memlm.ConfigError, match="one user at a time"):
        memory.search("seats", filters={"agent_id": "travel"})
    with pytest.raises(memlm.ConfigError, match="isolation"):
        memory.get_all(agent_id="travel")
    assert memory.search("seats", filters={"user_id": "ada", "agent_id": "travel"}, threshold=0)["results"]


def test_search_keeps_what_mem0_defaults_keep():
    memory = words_memory()
    plants = ["roses", "tulips", "basil", "mint", "thyme", "ferns", "ivy", "lilies", "daisies", "tomatoes", "beans",
              "peas"]
    for plant in plants:
        memory.add(f"garden {plant}", user_id="ada", infer=False)
    chatter = " ".join(f"w{n}" for n in range(40))  # a long memory that mentions the garden once
    memory.add(f"garden {chatter}", user_id="ada", infer=False)
    results = memory.search("garden", user_id="ada")["results"]
    assert len(results) == 13  # mem0: top_k=20, threshold=0.1 (memlm's old cut kept 5, none below 0.2)
    assert results[-1]["memory"].startswith("garden w0") and results[-1]["score"] < 0.3


def test_mem0_spellings_of_whose_memories():
    memory = words_memory()
    memory.add("I love jazz.", user_id="ada@example.com", metadata={"category": "music"})  # e-mails are user ids
    found = memory.search("jazz", filters={"AND": [{"user_id": "ada@example.com"}, {"category": "music"}]},
                          rerank=True, explain=True)["results"]
    assert [r["memory"] for r in found] == ["The user loves jazz."]


def test_every_id_taking_call_accepts_the_id_as_a_string():
    memory = words_memory()
    memory_id = str(memory.add("My locker code is 4417.", user_id="ada")["results"][0]["id"])
    assert memory.get(memory_id=memory_id)["memory"] == "The user's locker code is 4417."
    memory.update(memory_id=memory_id, data="The user's locker code is 5521.")
    assert [h["event"] for h in memory.history(memory_id=memory_id)] == ["ADD", "UPDATE"]
    memory.delete(memory_id=memory_id)
    assert memory.get_all(user_id="ada") == {"results": []}


def test_from_config_reads_mem0_settings(tmp_path):
    from memlm.facts.mem0_config import Mem0ConfigWarning, memory_settings

    config = {"vector_store": {"provider": "faiss", "config": {"collection_name": "test", "path": str(tmp_path / "f")}},
              "llm": {"provider": "openai", "config": {"model": "gpt-5-mini"}},
              "embedder": {"provider": "huggingface", "config": {"model": "multilingual-e5-small"}},
              "memlm": {"bank": {"slot_bonus": 0.1}}}
    with pytest.warns(Mem0ConfigWarning, match="llm"):
        settings = memory_settings(config)
    assert settings["path"] == str(tmp_path / "f" / "memlm-facts.sqlite")
    assert settings["encoder"] == "e5" and settings["config"].slot_bonus == 0.1
    assert memory_settings({"vector_store": {"provider": "pgvector", "config": {
        "dbname": "mem", "user": "me", "password": "p@ss", "host": "db", "port": 5433}}})["path"] == \
        "postgresql://me:p%40ss@db:5433/mem"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "path" not in memory_settings({})  # nothing to say: the default store, MiniLM
    with pytest.warns(Mem0ConfigWarning, match="unknown key 'vectorstore'"):  # mem0's model ignores it too
        memory_settings({"vectorstore": {}})
    for bad, message in (({"embedder": "minilm"}, "must be a dict"),
                         ({"memlm": {"bank": {"colour": 1}}}, "colour"), ([], "needs a dict")):
        with pytest.raises(memlm.ConfigError, match=message):
            memory_settings(bad)


def test_from_config_builds_a_working_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(FactMemory, "__init__", _words_init(FactMemory.__init__))
    memory = memlm.Memory.from_config({"vector_store": {"provider": "chroma", "config": {"path": str(tmp_path)}}})
    memory.add("I live in Oslo.", user_id="ada")
    assert (tmp_path / "memlm-facts.sqlite").exists()
    assert memory.search("Where do I live?", user_id="ada")["results"][0]["memory"] == "The user lives in Oslo."
    from memlm.facts.mem0_config import Mem0ConfigWarning
    with pytest.warns(Mem0ConfigWarning) as caught:
        memlm.Memory.from_config({"llm": {"provider": "openai"}, "vector_store": {"config": {"path": str(tmp_path)}}})
    assert caught[0].filename == __file__  # the warning points at the code that called from_config


def _words_init(original):
    """`FactMemory.__init__` with the bag-of-words embedding (from_config names an encoder; the tests
    have no need of MiniLM)."""
    def init(self, path=..., config=None, embed=None, encoder="minilm", dimension=None, **kwargs):
        original(self, path, config=config, embed=words_embed, encoder="words", dimension=WORDS_DIM, **kwargs)
    return init


def test_async_memory_awaits_every_call():
    from memlm.facts import AsyncMemory

    async def scenario():
        async with AsyncMemory(None, embed=words_embed, encoder="words", dimension=WORDS_DIM) as memory:
            added = await asyncio.gather(*(memory.add(f"My number {n} is {n * 7}.", user_id="ada")
                                           for n in range(5)))
            assert all(result["results"][0]["event"] == "ADD" for result in added)
            found = await memory.search("number 3", filters={"user_id": "ada"}, top_k=1)
            every = await memory.get_all(user_id="ada")
            first = every["results"][0]["id"]
            history = await memory.history(str(first))
            await memory.delete_all(user_id="ada")
            return found, every, history, await memory.get_all(user_id="ada")

    found, every, history, after = asyncio.run(scenario())
    assert found["results"][0]["memory"] == "The user's number 3 is 21."
    assert len(every["results"]) == 5 and history[0]["event"] == "ADD" and after == {"results": []}
    assert memlm.AsyncMemory is AsyncMemory
