"""`FactMemory` (`memlm.Memory`), the mem0-style API over the fact store: users, history, persistence,
concurrent writers, bad input."""

from __future__ import annotations

import multiprocessing

import pytest
from helpers import WORDS_DIM, text_embed, words_embed, words_memory

import memlm
from memlm.facts import FactMemory, FactNotFoundError, UnknownUserError


def test_a_user_never_sees_another_users_facts(store):
    memory = words_memory(store)
    alice = memory.add("My password hint is purple elephant.", user="alice")["results"][0]
    memory.add("My favourite animal is the elephant.", user="bob")
    hits = memory.search("purple elephant password hint", user="bob", min_similarity=-1)["results"]
    assert hits and all(hit["user"] == "bob" and hit["user_id"] == "bob" for hit in hits)
    with pytest.raises(FactNotFoundError):
        memory.get(alice["id"], user="bob")
    with pytest.raises(FactNotFoundError):
        memory.delete(alice["id"], user_id="bob")
    with pytest.raises(FactNotFoundError):
        memory.update(alice["id"], "hacked", user="bob")
    with pytest.raises(FactNotFoundError):
        memory.history(alice["id"], user="bob")
    assert memory.get(alice["id"], user="alice")["memory"] == "The user's password hint is purple elephant."
    assert [f["user"] for f in memory.get_all(user="bob")["results"]] == ["bob"]


def test_update_and_history_record_who_changed_what(store):
    memory = words_memory(store)
    fact_id = memory.add("I live in Porto.", user="ada")["results"][0]["id"]
    memory.update(fact_id, "The user lives in Lisbon.", user="ada")
    hits = memory.search("where lisbon", user="ada", min_similarity=-1)["results"]
    assert hits[0]["memory"] == "The user lives in Lisbon."
    # the stored vector is the new text's: similarity is the cosine of the query with the new text
    # (a stale vector, the old text's, would give the query's cosine with "The user lives in Porto.")
    query, new, old = words_embed(["where lisbon", "The user lives in Lisbon.", "The user lives in Porto."])
    assert hits[0]["similarity"] == pytest.approx(float(query @ new), abs=1e-5)
    assert float(query @ new) > float(query @ old) + 0.1
    memory.delete(fact_id, user="ada")
    history = memory.history(fact_id, user="ada")
    assert [(h["action"], h["old_text"], h["new_text"]) for h in history] == [
        ("add", None, "The user lives in Porto."),
        ("update", "The user lives in Porto.", "The user lives in Lisbon."),
        ("delete", "The user lives in Lisbon.", None)]
    assert [h["actor"] for h in history] == ["chat", "api", "api"]
    assert memory.get_all(user="ada") == {"results": []}  # a known user with nothing left: empty, not an error


def test_facts_survive_a_restart(store):
    path = store
    with words_memory(path) as memory:
        memory.add("I have two cats named Tom and Jerry.", user="ada")
    with words_memory(path) as reopened:
        facts = reopened.get_all(user="ada")["results"]
        assert [f["memory"] for f in facts] == ["The user has two cats named Tom and Jerry."]
        assert reopened.search("cats", user="ada")["results"][0]["id"] == facts[0]["id"]


def _add_many(path: str, worker: int, count: int, start) -> None:
    with FactMemory(path, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        start.wait(timeout=60)  # both writers begin together, so their writes overlap
        for number in range(count):
            if number == count // 2:  # and meet half-way: neither can finish before the other has begun
                start.wait(timeout=60)
            memory.add(f"worker {worker} fact {number}", user="shared", infer=False)


def test_two_processes_adding_to_one_store_lose_nothing(store):
    path = store
    words_memory(path).close()  # create it first, as a chat would
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_add_many, args=(path, worker, 60, start)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    with FactMemory(path, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        facts = memory.get_all(user="shared")["results"]
        assert len(facts) == 120
        assert len({f["id"] for f in facts}) == 120
        # the writers really overlapped: their rows interleave in insertion order
        writers_in_order = [int(f["memory"].split()[1]) for f in sorted(facts, key=lambda f: f["id"])]
        switches = sum(a != b for a, b in zip(writers_in_order, writers_in_order[1:], strict=False))
        assert switches >= 2, writers_in_order
        # this process's index catches up with rows other processes wrote
        assert memory.search("worker 1 fact 59", user="shared", limit=1)["results"][0]["memory"] == "worker 1 fact 59"


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   ", "empty"), ("x" * 10_000_000, "too long"),
    (b"\x89PNG\r\n", "must be text"), ("abc\x00def", "control characters"), (42, "must be text"),
])
def test_bad_fact_text_is_refused_and_nothing_is_lost(text, message, store):
    memory = words_memory(store)
    memory.add("I like tea.", user="ada")
    with pytest.raises(memlm.ConfigError, match=message):
        memory.add(text, user="ada", infer=False)
    assert [f["memory"] for f in memory.get_all(user="ada")["results"]] == ["The user likes tea."]


def test_unknown_users_have_no_memories_and_invalid_ones_are_clear_errors():
    memory = words_memory()
    assert memory.search("anything", user="nobody") == {"results": []}  # as mem0: a new user's first message
    assert memory.get_all(user="nobody") == {"results": []}
    with pytest.raises(UnknownUserError, match="nobody"):  # the bank itself still tells the difference
        memory.bank.retrieve("anything", user="nobody")
    with pytest.raises(memlm.ConfigError, match="user id"):
        memory.add("I like tea.", user="../etc")


def test_a_corrupted_database_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "facts.sqlite"
    with words_memory(path) as memory:
        memory.add("I like tea.", user="ada")
    path.write_bytes(b"this is not a database" * 100)
    damaged = path.read_bytes()
    with pytest.raises(memlm.CorruptedFileError):
        words_memory(path)
    assert path.read_bytes() == damaged


def test_a_store_made_by_another_encoder_is_refused(tmp_path):
    path = tmp_path / "facts.sqlite"
    words_memory(path).close()
    with pytest.raises(memlm.IncompatibleMemoryError, match="words"):
        FactMemory(path, embed=words_embed, encoder="other-encoder", dimension=WORDS_DIM)


def test_the_classic_six_facts_scenario_retrieves_relativity_first():
    # The real MiniLM, no language model: what `memlm demo` shows with the model attached.
    memory = FactMemory(None)
    facts = [("Einstein developed the theory of relativity.", "science"),
             ("The Great Wall of China is over 21,000 kilometres long.", "history"),
             ("Photosynthesis turns sunlight, water and carbon dioxide into sugar.", "biology"),
             ("Mount Everest is the highest mountain on Earth.", "geography"),
             ("Shakespeare wrote Hamlet around 1600.", "literature"),
             ("Water boils at 100 degrees Celsius at sea level.", "physics")]
    for text, category in facts:
        assert memory.add(text, user="classic", category=category, infer=False)["results"][0]["event"] == "ADD"
    again = memory.add("Einstein developed the theory of relativity!", user="classic", infer=False)
    assert again["results"][0]["event"] == "NONE"
    listed = memory.get_all(user="classic")["results"]
    assert [(f["memory"], f["category"]) for f in listed] == facts
    hits = memory.search("Einstein's theory", user="classic", limit=3)["results"]
    assert hits[0]["memory"] == "Einstein developed the theory of relativity."
    assert len(hits) == 1 or hits[0]["score"] > hits[1]["score"]


def test_the_store_url_picks_the_backend_and_memlm_store_is_the_default(postgres_store, monkeypatch):
    from memlm.facts.backends.postgres import PostgresFactStore
    from memlm.facts.store import FactStore

    options = dict(embed=words_embed, encoder="words", dimension=WORDS_DIM)
    with FactMemory(store=postgres_store, **options) as memory:
        assert isinstance(memory.store, PostgresFactStore)
        memory.add("I like tea.", user="ada")
    monkeypatch.setenv("MEMLM_STORE", postgres_store)
    with FactMemory(**options) as memory:  # no store given: MEMLM_STORE
        assert [f["memory"] for f in memory.get_all(user="ada")["results"]] == ["The user likes tea."]
    with FactMemory(None, **options) as memory:  # an explicit None stays in memory
        assert isinstance(memory.store, FactStore) and memory.store.path is None
    with pytest.raises(memlm.ConfigError, match="no fact store backend for cassandra"):
        FactMemory(store="cassandra://somewhere/facts", **options)


def _add_forever(path: str, started) -> None:
    with FactMemory(path, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        for number in range(100_000):
            memory.add(f"fact {number}", user="crash", infer=False)
            if number == 20:
                started.set()


def test_a_writer_killed_mid_write_leaves_every_fact_whole(store):
    """SIGKILL while a process writes: each fact is there with its history entry, or not at all."""
    words_memory(store).close()
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    writer = context.Process(target=_add_forever, args=(store, started))
    writer.start()
    assert started.wait(timeout=120)
    writer.kill()
    writer.join(timeout=30)
    with FactMemory(store, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        facts = memory.get_all(user="crash")["results"]
        assert len(facts) > 20
        for fact in facts:
            assert [h["action"] for h in memory.history(fact["id"], user="crash")] == ["add"]
        memory.add("after the crash", user="crash", infer=False)  # the store still takes writes
        assert memory.search("after the crash", user="crash", limit=1)["results"][0]["memory"] == "after the crash"


def test_update_changes_text_metadata_and_expiry_each_alone(tmp_path):
    """FactMemory.update's parts one at a time (mutants of update survived where only the text
    changed): mem0's `data` alias, metadata merged, expiry set by `expires_at` or `expiration_date`
    and cleared by None, nothing to change refused, and another user's id unknown under user_id."""
    memory = words_memory(tmp_path / "facts.sqlite")
    fact_id = memory.add("I live in Porto.", user_id="ada", infer=False, metadata={"a": 1})["results"][0]["id"]
    other = memory.add("I live in Oslo.", user_id="bob", infer=False)["results"][0]["id"]
    answer = memory.update(fact_id, data="I live in Faro.", user_id="ada")
    assert answer["message"] == "Memory updated successfully!" and answer["memory"] == "I live in Faro."
    assert answer["metadata"] == {"a": 1} and answer["expires_at"] is None  # untouched
    assert memory.update(fact_id, metadata={"b": 2}, user_id="ada")["metadata"] == {"a": 1, "b": 2}
    assert memory.get(fact_id, user_id="ada")["memory"] == "I live in Faro."  # metadata alone keeps the text
    assert memory.update(fact_id, expires_at="2030-01-02T00:00:00Z", user_id="ada")["expires_at"] == 1_893_542_400.0
    assert memory.get(fact_id, user_id="ada")["metadata"] == {"a": 1, "b": 2}  # an expiry alone keeps metadata
    assert memory.update(fact_id, expiration_date="2030-01-03", user_id="ada")["expires_at"] == 1_893_628_800.0
    assert memory.update(fact_id, "I live in Lagos.", user_id="ada")["expires_at"] == 1_893_628_800.0  # kept
    assert memory.update(fact_id, expires_at=None, user_id="ada")["expires_at"] is None
    with pytest.raises(memlm.ConfigError, match="^update needs a new text, metadata or expires_at$"):
        memory.update(fact_id, user_id="ada")
    with pytest.raises(memlm.ConfigError, match="expires_at 'soon' is not an ISO 8601"):
        memory.update(fact_id, expires_at="soon", user_id="ada")
    with pytest.raises(FactNotFoundError):
        memory.update(other, "hacked", user_id="ada")
    assert memory.get(other, user_id="bob")["memory"] == "I live in Oslo."
    memory.close()
