"""A chat turn learned at once (`FactBank.remember_turn`): one encoder call for its sentences, one
pass over the user's vectors for their near-duplicate candidates, one transaction for what it stores
and the touches of the turn's retrieval; and the same decisions as learning its facts one by one.

The real MiniLM decides what is a near-duplicate here (numbers, as in docs/bank.md's known limits)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Clock

from memlm.embeddings import MINILM_DIMENSION, sentence_encoder
from memlm.facts import FactBank, FactBankConfig
from memlm.facts.store import _FACT_COLUMNS, FactStore

ENCODER = "minilm:all-MiniLM-L6-v2"
USER = "ada"

# Turns that reach every decision: new facts, an exact duplicate, near-duplicates of an older fact and
# of a fact of the same turn, an update of an older fact and of a fact of the same turn.
TURNS = [
    "My sister Maria lives in Porto. I love sushi and I eat it about 12 times a year.",
    "I love sushi and I eat it about 38 times a year.",
    "I live in Lisbon. Actually I moved to Oslo last month.",
    "My sister Maria lives in Porto. My gym locker is number 4411.",
    "I love ramen and I eat it 5 times a week. I love ramen and I eat it 7 times a week.",
    "I work as a baker. My dog is called Rex.",
    "I work as a pilot these days. My dog's name is Biscuit.",
    "What is my locker number?",
    "My favourite colour is teal. My favourite colour is maroon now.",
    "I moved to Bergen.",
]


@pytest.fixture(scope="module")
def encoder():
    return sentence_encoder()


def _bank(path, encoder, clock, **config) -> FactBank:
    store = FactStore(path, MINILM_DIMENSION, ENCODER, clock=clock)
    return FactBank(FactBankConfig(user=USER, importance="constant", **config), store, encoder.encode)


def _outcome(results) -> list[tuple]:
    return [(r.status, r.fact.id if r.fact else None, r.fact.text if r.fact else None, r.reason,
             [f.id for f in r.superseded]) for r in results]


def _rows(store: FactStore) -> list[tuple]:
    """Every row but the embeddings (compared apart: one batch of sentences or one sentence per call
    may differ in the last bits, as the server's one batch per turn always did)."""
    facts = store.connection.execute(f"SELECT {_FACT_COLUMNS}, text_key FROM facts ORDER BY id").fetchall()
    history = store.connection.execute("SELECT fact_id, action, old_text, new_text, actor, time, reason FROM history "
                                       "ORDER BY id").fetchall()
    return facts + history


def test_a_turn_learned_at_once_decides_as_one_fact_after_another(tmp_path, encoder):
    """`capacity` makes `remember_turn` learn one fact at a time (eviction runs after each), the path
    every turn took before; a capacity no turn reaches evicts nothing, so the two must agree on
    everything: what is stored, duplicates, updates, ids, reasons, history, use counts."""
    clock = Clock()
    at_once = _bank(tmp_path / "once.sqlite", encoder, clock)
    one_by_one = _bank(tmp_path / "each.sqlite", encoder, clock, capacity=10**9)
    seen = {"near-duplicate": 0, "exact duplicate": 0, "supersedes": 0}
    for turn in TURNS:
        clock.now += 60
        outcomes = []
        for bank in (at_once, one_by_one):
            with bank.turn():
                if bank.store.has_user(USER):
                    bank.retrieve(turn)
                outcomes.append(_outcome(bank.remember_turn(turn, "Noted.")))
        assert outcomes[0] == outcomes[1], turn
        for key in seen:
            seen[key] += sum(key in reason for *_, reason, _ in outcomes[0])
    assert all(seen.values()), seen  # every decision was taken at least once
    assert _rows(at_once.store) == _rows(one_by_one.store)
    ids = [f.id for f in at_once.store.facts(USER, include_inactive=True)]
    np.testing.assert_allclose(at_once.store.embeddings(USER, ids), one_by_one.store.embeddings(USER, ids), atol=1e-5)
    at_once.store.check()


def test_a_near_duplicate_of_a_fact_stored_earlier_in_the_same_turn_is_caught(tmp_path, encoder):
    bank = _bank(tmp_path / "facts.sqlite", encoder, Clock())
    results = bank.remember_turn("I love ramen and I eat it 5 times a week. I love ramen and I eat it 7 times a week.")
    assert [r.status for r in results] == ["stored", "duplicate"]
    assert f"near-duplicate of fact {results[0].fact.id}" in results[1].reason


def test_a_turn_is_one_transaction_with_its_retrievals_touches(tmp_path, encoder):
    clock = Clock()
    bank = _bank(tmp_path / "facts.sqlite", encoder, clock)
    bank.remember_turn("My sister Maria lives in Porto. My gym locker is number 4411.")
    statements: list[str] = []
    bank.store.connection.raw.set_trace_callback(statements.append)
    embedded: list[list[str]] = []
    real = bank.embed
    bank.embed = lambda texts: embedded.append(list(texts)) or real(texts)
    clock.now += 60
    with bank.turn():
        used = bank.retrieve("Where does my sister live?")
        results = bank.remember_turn("I work as a baker. My dog is called Rex.", "Noted.")
    bank.store.connection.raw.set_trace_callback(None)
    assert [r.status for r in results] == ["stored", "stored"]
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1, statements
    assert len(embedded) == 2  # the question, then the turn's two sentences in one call
    assert len(embedded[1]) == 2
    touched = bank.store.get(used[0].fact.id, USER)
    assert touched.use_count == 1 and touched.last_used == clock.now


def test_touches_held_back_by_a_turn_are_written_when_it_ends(tmp_path, encoder):
    bank = _bank(tmp_path / "facts.sqlite", encoder, Clock())
    bank.remember_turn("My sister Maria lives in Porto.")
    with bank.turn():
        fact = bank.retrieve("Where does my sister live?")[0].fact
        assert bank.store.get(fact.id, USER).use_count == 0  # not yet: with the turn's transaction
    assert bank.store.get(fact.id, USER).use_count == 1


def test_a_batch_rolled_back_leaves_the_indexes_as_they_were(tmp_path, encoder):
    """Searches inside a batch see the committed facts only, so an index never holds a row a
    rollback took away (and a later sync still applies what was committed)."""
    bank = _bank(tmp_path / "facts.sqlite", encoder, Clock())
    bank.remember_turn("My sister Maria lives in Porto.")
    store = bank.store
    vector = encoder.encode(["My dog is called Rex."])[0]
    with pytest.raises(RuntimeError), store.batch():
        added = store.add(USER, "The user's dog is called Rex.", vector, importance=1.0)
        assert [f.id for f, _ in store.search(USER, vector, 5)] != [added.id]  # not before the commit
        raise RuntimeError("crash in the middle of a turn")
    assert store.count(USER) == 1 and store.lexical_search(USER, "Rex", 5) == []
    store.check()
    with store.batch():
        added = store.add(USER, "The user's dog is called Rex.", vector, importance=1.0)
    assert store.search(USER, vector, 1)[0][0].id == added.id
    store.check()


def test_another_process_sees_a_turns_facts_and_its_updates(tmp_path, encoder):
    """The incremental sync of a second process's index (only the changes since its last one):
    new facts in, superseded and deleted ones out, with the same results as a fresh process."""
    bank = _bank(tmp_path / "facts.sqlite", encoder, Clock())
    other = FactStore(tmp_path / "facts.sqlite", MINILM_DIMENSION, ENCODER)
    bank.remember_turn("I live in Lisbon. My dog is called Rex.")
    query = encoder.encode(["Where do I live?"])[0]
    assert len(other.search(USER, query, 10)) == 2
    moved = bank.remember_turn("I moved to Oslo.")[0]
    bank.store.delete([f.id for f in bank.store.facts(USER) if "Rex" in f.text], USER)
    found = other.search(USER, query, 10)
    assert [f.id for f, _ in found] == [moved.fact.id]
    fresh = FactStore(tmp_path / "facts.sqlite", MINILM_DIMENSION, ENCODER)
    assert [(f.id, s) for f, s in fresh.search(USER, query, 10)] == [(f.id, s) for f, s in found]
    other.check()
    for store in (other, fresh):
        store.close()


def test_a_turn_sees_what_another_process_committed_before_it(tmp_path, encoder):
    """The turn's near-duplicate pass runs inside its transaction (after BEGIN IMMEDIATE) on an index
    brought up to date there, so a fact another process committed just before is a duplicate, not a
    second copy."""
    bank = _bank(tmp_path / "facts.sqlite", encoder, Clock())
    bank.remember_turn("My sister Maria lives in Porto.")
    bank.store.search(USER, encoder.encode(["x"])[0], 1)  # this process's index is synced now
    other = FactBank(FactBankConfig(user=USER, importance="constant"),
                     FactStore(tmp_path / "facts.sqlite", MINILM_DIMENSION, ENCODER), encoder.encode)
    first = other.remember_turn("I love ramen and I eat it 5 times a week.")[0]
    results = bank.remember_turn("I love ramen and I eat it 7 times a week.")
    assert results[0].status == "duplicate"
    assert f"near-duplicate of fact {first.fact.id}" in results[0].reason
    other.store.close()


def _turns_until_killed(path: str, acks: str, crash_at: int) -> None:
    """Chat turns as the server runs them (retrieve, then learn, in `turn()`), acknowledged one by one
    (a `K` line with the facts a turn stored, after it returned); turn `crash_at` kills the process
    (SIGKILL) right after its first fact was inserted, before the second."""
    import json
    import os
    import signal

    from helpers import WORDS_DIM, words_embed

    store = FactStore(path, WORDS_DIM, "words")
    bank = FactBank(FactBankConfig(user=USER, importance="constant"), store, words_embed)
    handle = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    real_add, number = store.add, 0

    def add(*args, **kwargs):
        fact = real_add(*args, **kwargs)
        if number == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fact

    store.add = add
    for number in range(crash_at + 1):  # noqa: B007 - `add` reads it
        turn = f"My locker number is {number}. I have practised judo for {number + 3} years."
        with bank.turn():
            if number:
                bank.retrieve(f"What is my locker number {number - 1}?")
            stored = [(r.fact.id, r.fact.text) for r in bank.remember_turn(turn, "Noted.") if r.stored]
        os.write(handle, f"K {json.dumps(stored)}\n".encode())


def test_a_chat_turn_killed_between_its_facts_leaves_none_of_them(tmp_path):
    """SIGKILL in the middle of a turn's write (one fact inserted, the next not yet): the turn's
    transaction was never committed, so none of its facts are there (a fact per transaction left the
    first); every acknowledged turn's facts and touches are, and the store passes its check."""
    import json
    import multiprocessing

    from helpers import WORDS_DIM

    path, acks = str(tmp_path / "facts.sqlite"), tmp_path / "acks"
    writer = multiprocessing.get_context("spawn").Process(target=_turns_until_killed, args=(path, str(acks), 12))
    writer.start()
    writer.join(timeout=120)
    assert writer.exitcode == -9
    acked = [json.loads(line[2:]) for line in acks.read_text().splitlines()]
    assert len(acked) == 12 and all(len(stored) == 2 for stored in acked)
    store = FactStore(path, WORDS_DIM, "words")
    store.check()
    facts = {fact.id: fact for fact in store.facts(USER, include_inactive=True)}
    assert {fact_id: fact.text for fact_id, fact in facts.items()} == {
        fact_id: text for stored in acked for fact_id, text in stored}
    assert sum(fact.use_count for fact in facts.values()) == 11  # each acknowledged turn's retrieval
    store.close()
