"""FactStore on its own, with 4-d vectors and a fake clock: what each write stores and logs, all-or-nothing
batches, superseding, the per-user indexes kept in step across two handles of one file, and `check()`
finding each kind of damage it names. (The API above it is tested in test_api.py and test_turns.py.)"""

from __future__ import annotations

import re

import numpy as np
import pytest

import memlm
from memlm.errors import CorruptedFileError
from memlm.facts.store import SUPERSEDED, DuplicateFactError, FactNotFoundError, FactStore, UnknownUserError
from memlm.facts.vector_index import UserIndex


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    opened = FactStore(tmp_path / "facts.db", dimension=4, encoder="test", clock=clock)
    yield opened
    opened.close()


def test_add_stores_every_field_and_logs_the_add(store, clock):
    fact = store.add("ada", "Ada lives in Ghent.", unit(1, 0, 0, 0), importance=0.7, category="home",
                     source="I live in Ghent", session="s1", row=2, spoken="I live in Ghent.", expires_at=5000.0,
                     metadata={"topic": "city"}, agent_id="bot", run_id="r1", slot="home city",
                     context="where do you live", actor="tester")
    assert (fact.user, fact.text, fact.category, fact.importance, fact.source, fact.session, fact.row) == (
        "ada", "Ada lives in Ghent.", "home", 0.7, "I live in Ghent", "s1", 2)
    assert (fact.spoken, fact.expires_at, fact.metadata, fact.agent_id, fact.run_id, fact.slot, fact.context) == (
        "I live in Ghent.", 5000.0, {"topic": "city"}, "bot", "r1", "home city", "where do you live")
    assert (fact.created, fact.last_used, fact.updated, fact.use_count, fact.status) == (1000.0, 1000.0, 1000.0, 0,
                                                                                         "active")
    [change] = store.history(fact.id)
    assert (change.action, change.old_text, change.new_text, change.actor, change.time) == (
        "add", None, "Ada lives in Ghent.", "tester", 1000.0)
    np.testing.assert_array_equal(store.embeddings("ada", [fact.id])[0], unit(1, 0, 0, 0))
    assert store.users() == ["ada"] and store.has_user("ada") and not store.has_user("bob")
    assert store.latest_in_run("ada", "r1").id == fact.id and store.latest_in_run("ada", "r2") is None
    assert store.scope_in_other_owners("agent_id", "bot", "bob") and not store.scope_in_other_owners(
        "agent_id", "bot", "ada")
    with pytest.raises(DuplicateFactError):  # the same text (case and final stop aside) for the same row
        store.add("ada", "ada lives in ghent", unit(0, 1, 0, 0), importance=1.0, row=2)
    assert store.add("ada", "Ada lives in Ghent.", unit(0, 1, 0, 0), importance=1.0, row=3).row == 3
    with pytest.raises(memlm.ConfigError, match="scope"):
        store.scope_in_other_owners("user", "ada", "bob")


def test_add_many_writes_all_or_nothing_with_one_history_entry_each(store, clock):
    ids = store.add_many("ada", ["one.", "two.", "three."], np.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0),
                                                                      unit(0, 0, 1, 0)]), importance=0.5, actor="me")
    assert ids == sorted(ids) and [store.get(i).text for i in ids] == ["one.", "two.", "three."]
    assert all(store.get(i).importance == 0.5 for i in ids)
    assert [(c.action, c.new_text, c.actor, c.time) for i in ids for c in store.history(i)] == [
        ("add", text, "me", 1000.0) for text in ("one.", "two.", "three.")]
    before = store.version()
    with pytest.raises(DuplicateFactError):
        store.add_many("ada", ["four.", "two."], np.stack([unit(1, 1, 0, 0), unit(0, 1, 1, 0)]))
    assert store.version() == before and store.count("ada") == 3  # "four." rolled back with it
    with pytest.raises(memlm.ConfigError, match="2 texts but 1 embeddings"):
        store.add_many("ada", ["five.", "six."], unit(1, 0, 0, 1).reshape(1, -1))
    with pytest.raises(memlm.IncompatibleMemoryError, match="width 3"):
        store.add_many("ada", ["five."], np.ones((1, 3)))
    with pytest.raises(memlm.ConfigError, match="NaN"):
        store.add_many("ada", ["five."], np.full((1, 4), np.nan))
    [plain] = store.add_many("ada", ["seven."], unit(0, 0, 0, 1).reshape(1, -1))
    assert store.get(plain).importance == 1.0  # the default


def test_superseding_retires_only_the_users_own_active_fact_and_says_why(store, clock):
    old = store.add("ada", "Ada lives in Ghent.", unit(1, 0, 0, 0), importance=1.0)
    other = store.add("bob", "Bob lives in Ghent.", unit(1, 0, 0, 0), importance=1.0)
    clock.now = 2000.0
    new = store.add("ada", "Ada lives in Tartu.", unit(0, 1, 0, 0), importance=1.0, supersedes=[old.id, other.id],
                    reason="same slot", actor="rules")
    retired = store.get(old.id)
    assert (retired.status, retired.superseded_by, retired.updated) == (SUPERSEDED, new.id, 2000.0)
    assert store.get(other.id).status == "active"  # another user's id is left alone
    change = store.history(old.id)[-1]
    assert (change.action, change.old_text, change.new_text, change.actor, change.reason) == (
        "supersede", "Ada lives in Ghent.", "Ada lives in Tartu.", "rules", f"superseded by fact {new.id}: same slot")
    assert [f.id for f, _ in store.search("ada", unit(1, 0, 0, 0), k=5)] == [new.id]  # retired: left the index
    assert store.count("ada") == 1 and store.count("ada", include_inactive=True) == 2
    third = store.add("ada", "Ada lives in Oslo.", unit(0, 0, 1, 0), importance=1.0, supersedes=[old.id])
    assert store.get(old.id).superseded_by == new.id and len(store.history(third.id)) == 1  # already retired
    plain = store.add("ada", "Ada has a cat.", unit(0, 0, 0, 1), importance=1.0, supersedes=[new.id])
    assert store.history(new.id)[-1].reason == f"superseded by fact {plain.id}"  # no reason given: no colon


def test_update_changes_text_metadata_and_expiry_and_logs_old_and_new(store, clock):
    fact = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0, metadata={"a": 1})
    store.add("ada", "Ada has a dog.", unit(0, 1, 0, 0), importance=1.0)
    clock.now = 3000.0
    changed = store.update(fact.id, "ada", "Ada has two cats.", unit(0, 0, 1, 0), metadata={"b": 2},
                           expires_at=9000.0, actor="me", spoken="I have two cats.", slot="pets")
    assert (changed.text, changed.metadata, changed.expires_at, changed.updated, changed.last_used) == (
        "Ada has two cats.", {"a": 1, "b": 2}, 9000.0, 3000.0, 3000.0)
    assert (changed.spoken, changed.slot) == ("I have two cats.", "pets")
    np.testing.assert_array_equal(store.embeddings("ada", [fact.id])[0], unit(0, 0, 1, 0))
    change = store.history(fact.id)[-1]
    assert (change.action, change.old_text, change.new_text, change.actor) == (
        "update", "Ada has a cat.", "Ada has two cats.", "me")
    assert store.search("ada", unit(0, 0, 1, 0), k=1)[0][0].id == fact.id  # the index follows the new vector
    assert store.update(fact.id, "ada", expires_at=None).expires_at is None  # None: never expires
    assert store.update(fact.id, "ada", metadata={"c": 3}).text == "Ada has two cats."  # text untouched
    with pytest.raises(memlm.ConfigError, match="embedding"):
        store.update(fact.id, "ada", "Ada has three cats.")
    with pytest.raises(DuplicateFactError):
        store.update(fact.id, "ada", "Ada has a dog.", unit(0, 1, 0, 0))
    with pytest.raises(FactNotFoundError):
        store.update(fact.id, "bob", metadata={"x": 1})


def test_delete_and_touch_reach_only_the_named_users_facts(store, clock):
    ada = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0)
    bob = store.add("bob", "Bob has a cat.", unit(1, 0, 0, 0), importance=1.0)
    clock.now = 4000.0
    store.touch([ada.id, bob.id], "ada")
    assert (store.get(ada.id).last_used, store.get(ada.id).use_count) == (4000.0, 1)
    assert (store.get(bob.id).last_used, store.get(bob.id).use_count) == (1000.0, 0)
    store.touch([ada.id], "ada", now=4500.0)
    assert (store.get(ada.id).last_used, store.get(ada.id).use_count) == (4500.0, 2)
    assert store.delete([bob.id, ada.id, 999], "ada", actor="me") == 1
    assert store.get(bob.id).text == "Bob has a cat."
    assert [(c.action, c.old_text, c.new_text, c.actor) for c in store.history(ada.id)][-1] == (
        "delete", "Ada has a cat.", None, "me")
    with pytest.raises(FactNotFoundError):
        store.get(ada.id)
    store.add_many("bob", ["b1.", "b2."], np.stack([unit(0, 1, 0, 0), unit(0, 0, 1, 0)]))
    assert store.delete_all("bob") == 3 and store.count("bob", include_inactive=True) == 0
    with pytest.raises(UnknownUserError):
        store.delete_all("carol")


def test_two_handles_of_one_file_see_each_others_writes_in_search(tmp_path, clock):
    first = FactStore(tmp_path / "shared.db", dimension=4, encoder="test", clock=clock)
    second = FactStore(tmp_path / "shared.db", dimension=4, encoder="test", clock=clock)
    kept = first.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0)
    gone = first.add("ada", "Ada has a dog.", unit(0.9, 0.1, 0, 0), importance=1.0)
    assert {f.id for f, _ in second.search("ada", unit(1, 0, 0, 0), k=5)} == {kept.id, gone.id}
    assert {f.id for f, _ in second.lexical_search("ada", "cat dog", k=5)} == {kept.id, gone.id}
    first.delete([gone.id], "ada")
    moved = first.update(kept.id, "ada", "Ada has a parrot.", unit(0, 0, 0, 1))
    assert [f.id for f, _ in second.search("ada", unit(0, 0, 0, 1), k=5)] == [moved.id]
    assert [f.id for f, _ in second.lexical_search("ada", "parrot", k=5)] == [moved.id]
    assert second.lexical_search("ada", "dog", k=5) == [] and second.check()["active"] == 1
    first.close()
    second.close()


def _four_facts(store: FactStore) -> int:
    """Two users, four facts, one superseded; returns the id of a live fact of ada's."""
    store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0)
    old = store.add("ada", "Ada lives in Ghent.", unit(0, 1, 0, 0), importance=1.0)
    new = store.add("ada", "Ada lives in Tartu.", unit(0, 0, 1, 0), importance=1.0, supersedes=[old.id])
    store.add("bob", "Bob has a dog.", unit(0, 0, 0, 1), importance=1.0)
    return new.id


@pytest.mark.parametrize(("statement", "message"), [
    ("UPDATE facts SET embedding = zeroblob(12) WHERE user = 'bob'",
     r"1 fact\(s\) with an embedding of the wrong width"),
    ("DELETE FROM history WHERE action = 'add' AND user = 'bob'", r"1 fact\(s\) without an 'add' in the history"),
    ("DELETE FROM users WHERE user = 'bob'", r"facts of unregistered users \['bob'\]"),
])
def test_check_names_damage_to_the_rows(store, statement, message):
    _four_facts(store)
    assert store.check() == {"users": 2, "facts": 4, "active": 3}
    store.connection.execute(statement)
    with pytest.raises(CorruptedFileError, match=message):
        store.check()


def test_check_names_an_index_out_of_step_with_the_active_facts(store):
    live = _four_facts(store)
    index, lexical = store._synced_indexes("ada")
    index.remove(np.asarray([live], dtype=np.int64))  # the vector index loses an active fact
    with pytest.raises(CorruptedFileError, match=rf"vector index holds \[\] that are not active facts and misses "
                                                 rf"\[{live}\]"):
        store.check()
    store._indexes.clear()  # rebuilt from the change log: sound again
    assert store.check()["active"] == 3
    store._synced_indexes("ada")[1].remove([live])
    with pytest.raises(CorruptedFileError, match="lexical index disagrees"):
        store.check()


def test_listing_orders_filters_and_pages_the_live_facts(store, clock):
    low = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=0.2, category="pets")
    high = store.add("ada", "Ada has a dog.", unit(0, 1, 0, 0), importance=0.9, category="pets")
    home = store.add("ada", "Ada lives in Ghent.", unit(0, 0, 1, 0), importance=0.5, category="home",
                     expires_at=1500.0, latent=np.arange(3, dtype=np.float32))
    store.touch([low.id], "ada", now=1200.0)
    ids = lambda facts: [fact.id for fact in facts]  # noqa: E731
    assert ids(store.facts("ada")) == [low.id, high.id, home.id]
    assert ids(store.facts("ada", order="importance")) == [high.id, home.id, low.id]
    assert ids(store.facts("ada", order="recent")) == [low.id, high.id, home.id]
    assert ids(store.facts("ada", category="pets")) == [low.id, high.id]
    assert ids(store.facts("ada", limit=1, offset=1)) == [high.id] and ids(store.facts("ada", offset=2)) == [home.id]
    latent_ids, rows, vectors = store.latents("ada")
    assert latent_ids == [home.id] and rows == [None] and vectors[0].tolist() == [0.0, 1.0, 2.0]
    clock.now = 2000.0  # "Ada lives in Ghent." has expired: listed only when asked for inactive facts too
    assert ids(store.facts("ada")) == [low.id, high.id] and store.latents("ada") == ([], [], [])
    assert ids(store.facts("ada", include_inactive=True)) == [low.id, high.id, home.id]
    assert store.count("ada") == 2 and store.count("ada", include_inactive=True) == 3


@pytest.mark.parametrize(("field", "value", "named"), [
    ("source", "x" * 200_001, "source"), ("context", "x" * 200_001, "context"), ("spoken", "", "sentence"),
    ("expires_at", float("nan"), "expires_at"),
])
def test_a_bad_field_is_refused_by_name_and_nothing_is_written(store, field, value, named):
    with pytest.raises(memlm.ConfigError, match=named):
        store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0, **{field: value})
    assert store.users() == [] and store.version() == 0
    with pytest.raises(memlm.ConfigError, match="user id"):
        store.add("", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0)


@pytest.mark.parametrize("call", [
    lambda store: store.add("bad user", "A fact.", unit(1, 0, 0, 0), importance=1.0),
    lambda store: store.add_many("bad user", ["A fact."], np.stack([unit(1, 0, 0, 0)])),
    lambda store: store.delete([1], "bad user"),
    lambda store: store.get(1, user="bad user"),
    lambda store: store.has_user("bad user"),
    lambda store: store.search("bad user", unit(1, 0, 0, 0), k=1),
], ids=["add", "add_many", "delete", "get", "has_user", "search"])
def test_every_entry_point_names_a_bad_user_id_as_one(store, call):
    with pytest.raises(memlm.ConfigError, match=r"^invalid user id 'bad user'"):
        call(store)


@pytest.mark.parametrize(("field", "named"), [("source", "source"), ("context", "context")])
def test_sources_and_contexts_may_be_longer_than_a_fact_up_to_their_own_limit(store, field, named):
    long = "x" * 20_001  # over a fact's limit, under a source's
    fact = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0, **{field: long})
    assert len(getattr(fact, field)) == 20_001
    with pytest.raises(memlm.ConfigError, match=rf"^{named} is too long \(200,001 characters; limit 200,000\)"):
        store.add("ada", "Ada has a dog.", unit(0, 1, 0, 0), importance=1.0, **{field: "x" * 200_001})
    with pytest.raises(memlm.ConfigError, match=r"^sentence is empty"):
        store.add("ada", "Ada has a dog.", unit(0, 1, 0, 0), importance=1.0, spoken=" ")


def test_errors_say_which_user_and_which_field(store):
    fact = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0)
    with pytest.raises(memlm.ConfigError, match=r"^expires_at "):
        store.add("ada", "Ada has a dog.", unit(0, 1, 0, 0), importance=1.0, expires_at=float("inf"))
    with pytest.raises(memlm.ConfigError, match=r"^expires_at "):
        store.update(fact.id, "ada", expires_at=float("nan"))
    with pytest.raises(DuplicateFactError, match=r"already stored for user 'ada'"):
        store.add("ada", "Ada has a cat.", unit(0, 1, 0, 0), importance=1.0)
    with pytest.raises(DuplicateFactError, match=r"already stored for user 'ada'"):
        store.add_many("ada", ["Ada has a cat."], np.stack([unit(0, 1, 0, 0)]))
    other = store.add("ada", "Ada has a dog.", unit(0, 1, 0, 0), importance=1.0)
    with pytest.raises(DuplicateFactError, match=r"^user 'ada' already has a fact with this text"):
        store.update(other.id, "ada", "Ada has a cat.", unit(0, 1, 0, 0))
    with pytest.raises(memlm.ConfigError, match=r"^a new text needs its embedding$"):
        store.update(other.id, "ada", "Ada has a bird.")
    with pytest.raises(memlm.ConfigError, match=r"^embedding contains NaN or infinity$"):
        store.add("ada", "Ada has a fox.", np.asarray([np.nan, 0, 0, 1], dtype=np.float32), importance=1.0)
    with pytest.raises(FactNotFoundError, match=r"^no fact with id 99 for user 'ada'$"):
        store.get(99, user="ada")
    with pytest.raises(FactNotFoundError, match=r"^no fact with id 99$"):
        store.get(99)
    with pytest.raises(FactNotFoundError, match=r"^no fact with id 99 for user 'ada'$"):
        store.history(99, user="ada")
    with pytest.raises(FactNotFoundError, match=r"^no fact with id 99$"):
        store.history(99)
    assert store.scope_in_other_owners("run_id", "r1", "ada") is False  # both scope fields are known


def test_a_refused_update_of_another_users_fact_leaves_no_trace(store):
    fact = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0, reason="told in session 1")
    assert store.history(fact.id)[0].reason == "told in session 1"
    with pytest.raises(FactNotFoundError, match="for user 'bob'"):
        store.update(fact.id, "bob", "Bob has a cat.", unit(0, 1, 0, 0))
    assert [change.action for change in store.history(fact.id)] == ["add"]
    updated = store.update(fact.id, "ada", metadata={"pet": "cat"})  # no new text: the log keeps the old one
    assert updated.metadata == {"pet": "cat"}
    assert (store.history(fact.id)[-1].old_text, store.history(fact.id)[-1].new_text) == ("Ada has a cat.",) * 2
    store.delete_all("ada", actor="admin")
    assert store.history(fact.id)[-1].actor == "admin"


def test_vectors_of_any_float_type_or_shape_are_stored_as_float32(store):
    fact = store.add("ada", "Ada has a cat.", np.asarray([[1.0, 0.0, 0.0, 0.0]]), importance=1.0,
                     latent=np.asarray([0.5, 0.25], dtype=np.float64))
    embedding = store.embeddings("ada", [fact.id])
    assert embedding.dtype == np.float32 and embedding.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert store.latents("ada")[2][0].tolist() == [0.5, 0.25]
    store.add("ada", "Ada has a fox.", unit(0, 0, 1, 0), importance=1.0, row=3, latent=np.ones(2))
    assert store.latents("ada")[1] == [None, 3]  # each latent's batch row
    moved = store.update(fact.id, "ada", "Ada has a dog.", np.asarray([0.0, 1.0, 0.0, 0.0]),
                         latent=np.asarray([0.75], dtype=np.float64))
    assert store.latents("ada")[2][0].tolist() == [0.75] and moved.text == "Ada has a dog."
    empty = store.embeddings("ada", [])
    assert empty.shape == (0, 4) and empty.dtype == np.float32
    hit = store.search("ada", np.asarray([0.0, 1.0, 0.0, 0.0]), k=1)  # a float64 query
    assert hit[0][0].id == fact.id


def test_reading_helpers_return_the_named_facts_in_order(store):
    first = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0, row=1)
    second = store.add("ada", "Ada lives in Ghent.", unit(0.8, 0.6, 0, 0), importance=1.0, row=2)
    store.add("bob", "Bob has a dog.", unit(1, 0, 0, 0), importance=1.0)
    np.testing.assert_array_equal(store.embeddings("ada", [second.id, first.id]),
                                  np.stack([unit(0.8, 0.6, 0, 0), unit(1, 0, 0, 0)]))
    assert sorted(f.id for f in store.facts_by_id("ada", [second.id, first.id, first.id + 2])) == [first.id, second.id]
    assert store.find_duplicate("ada", "ada has a cat", row=1).id == first.id
    assert store.find_duplicate("ada", "Ada has a cat.", row=2) is None
    assert store.version() == 3 and store.version("ada") == 2 and store.version("carol") == 0
    # Rows and filters reach both searches.
    assert [f.id for f, _ in store.search("ada", unit(1, 0, 0, 0), k=5, row=2)] == [second.id]
    assert [f.id for f, _ in store.lexical_search("ada", "Ada", k=5, row=1)] == [first.id]
    assert store.search("ada", unit(1, 0, 0, 0), k=5, accept=lambda fact: fact.id != first.id)[0][0].id == second.id
    assert store.lexical_search("ada", "Ada", k=5, accept=lambda fact: False) == []
    # near: every active fact at or above the threshold, best first, per query vector.
    near = store.near("ada", np.stack([unit(1, 0, 0, 0), unit(0, 0, 0, 1)]), threshold=0.7)
    assert [[fact_id for fact_id, _ in hits] for hits in near] == [[first.id, second.id], []]
    assert near[0][1][1] == pytest.approx(0.8)


def test_lexical_search_reads_the_spoken_sentence_and_context_too(store):
    fact = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0, spoken="I adopted a tabby",
                     context="asked about the garden")
    other = FactStore(store.path, dimension=4, encoder="test", clock=store.clock)  # built from the file
    for handle in (store, other):
        assert [f.id for f, _ in handle.lexical_search("ada", "tabby", k=3)] == [fact.id]
        assert [f.id for f, _ in handle.lexical_search("ada", "garden", k=3)] == [fact.id]
    other.close()


def test_more_facts_than_one_sqlite_statement_takes_are_indexed_and_read_once_each(tmp_path, clock):
    first = FactStore(tmp_path / "many.db", dimension=4, encoder="test", clock=clock)
    vectors = np.random.default_rng(0).normal(size=(1901, 4)).astype(np.float32)
    ids = first.add_many("ada", [f"Fact number {n}." for n in range(1901)], vectors)
    second = FactStore(tmp_path / "many.db", dimension=4, encoder="test", clock=clock)
    index = second._synced_index("ada")
    assert isinstance(index, UserIndex) and len(index) == 1901 and second.check()["active"] == 1901
    assert sorted(fact.id for fact in second.facts_by_id("ada", ids)) == ids
    first.close()
    second.close()


def test_a_new_store_makes_its_folders_and_a_blocked_path_names_itself(tmp_path):
    nested = tmp_path / "a" / "b" / "facts.db"
    FactStore(nested, dimension=4, encoder="test").close()
    assert nested.is_file()
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "facts.db"
    with pytest.raises(memlm.StorageError, match=rf"^could not write {re.escape(str(blocked))}: .*File exists"):
        FactStore(blocked, dimension=4, encoder="test")


def test_a_copy_holds_the_same_facts(store, tmp_path):
    fact = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0)
    store.copy_to(tmp_path / "copy.db")
    copy = FactStore(tmp_path / "copy.db", dimension=4, encoder="test")
    assert [f.text for f in copy.facts("ada")] == ["Ada has a cat."] and copy.get(fact.id).id == fact.id
    empty = FactStore(None, dimension=4, encoder="test")
    empty.replace_with(copy)
    assert [f.text for f in empty.facts("ada")] == ["Ada has a cat."]
    copy.close()
    empty.close()


def test_an_encoder_mismatch_names_both_encoders_and_widths(tmp_path):
    FactStore(tmp_path / "facts.db", dimension=4, encoder="minilm").close()
    with pytest.raises(memlm.IncompatibleMemoryError, match=r"embedded by minilm \(4-d\), but this bank uses e5 "
                                                             r"\(8-d\)"):
        FactStore(tmp_path / "facts.db", dimension=8, encoder="e5")


def test_check_lists_at_most_five_ids_per_problem_and_checks_every_user(tmp_path):
    store = FactStore(None, dimension=4, encoder="test")  # in memory: named as such
    ids = store.add_many("ada", [f"Ada fact {n}." for n in range(7)], np.stack([unit(1, 0, 0, 0)] * 7))
    store._synced_indexes("ada")
    store.connection.execute("UPDATE facts SET status = 'superseded' WHERE user = 'ada' AND id > ?", (ids[0],))
    blob = unit(0, 1, 0, 0).tobytes()
    insert = ("INSERT INTO facts (user, text, text_key, embedding, importance, created, last_used, updated) "
              "VALUES (?, 'x', ?, ?, 1, 0, 0, 0)")
    for user in ["Bad name", "u1", "u2", "u3", "u4", "u5"]:  # facts of six unregistered users, one refused by name
        store.connection.execute(insert, (user, user, blob))
    unseen = [store.connection.execute(insert, ("ada", f"k{n}", blob)).lastrowid for n in range(6)]  # never indexed
    with pytest.raises(CorruptedFileError) as raised:
        store.check()
    message = str(raised.value)
    assert message.startswith("fact store :memory: is inconsistent: facts of unregistered users "
                              "['Bad name', 'u1', 'u2', 'u3', 'u4']; 12 fact(s) without an 'add' in the history; ")
    assert f"user 'ada': vector index holds {ids[1:6]} that are not active facts and misses {unseen[:5]}" in message
    assert "user 'u5': vector index holds [] that are not active facts and misses [" in message  # after 'Bad name'
    store.close()


def test_a_schema_1_file_is_brought_to_schema_2_and_its_facts_stay_live(tmp_path, clock):
    from memlm.store.sqlite import get_meta

    path = tmp_path / "old.db"
    store = FactStore(path, dimension=4, encoder="test", clock=clock)
    fact = store.add("ada", "Ada has a cat.", unit(1, 0, 0, 0), importance=1.0)
    store.connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store.close()
    reopened = FactStore(path, dimension=4, encoder="test", clock=clock)
    assert int(get_meta(reopened.connection, "schema_version")) == 2
    assert reopened.search("ada", unit(1, 0, 0, 0), k=1)[0][0].id == fact.id
    added = reopened.add("ada", "Ada has a dog.", unit(0, 1, 0, 0), importance=1.0, context="pets", run_id="r")
    assert added.run_id == "r"
    reopened.close()


def test_check_reports_sqlites_own_integrity_verdict(tmp_path):
    import sqlite3

    path = tmp_path / "facts.db"
    FactStore(path, dimension=4, encoder="test").close()
    raw = sqlite3.connect(path)  # rows no write through SQLite's constraints could leave: NULL texts
    schema = raw.execute("SELECT sql FROM sqlite_schema WHERE name = 'facts'").fetchone()[0]
    raw.execute("PRAGMA writable_schema = ON")
    nullable = schema.replace("text TEXT NOT NULL", "text TEXT")
    raw.execute("UPDATE sqlite_schema SET sql = ? WHERE name = 'facts'", (nullable,))
    raw.commit()
    raw.close()
    raw = sqlite3.connect(path)
    for n in range(6):
        raw.execute("INSERT INTO facts (user, text, text_key, embedding, importance, created, last_used) "
                    "VALUES ('ada', NULL, ?, zeroblob(16), 1, 0, 0)", (f"k{n}",))
    raw.execute("PRAGMA writable_schema = ON")
    raw.execute("UPDATE sqlite_schema SET sql = ? WHERE name = 'facts'", (schema,))
    raw.commit()
    raw.close()
    store = FactStore(path, dimension=4, encoder="test")
    with pytest.raises(CorruptedFileError, match=rf"^fact store {re.escape(str(path))} is inconsistent: "
                                                 rf"integrity_check: {'; '.join(['NULL value in facts.text'] * 5)}; "
                                                 r"facts of unregistered users \['ada'\]"):
        store.check()
    store.close()


def test_a_file_without_the_newer_columns_gains_them(tmp_path, clock):
    import sqlite3

    from memlm.facts.schema import _NEW_COLUMNS, _SCHEMA

    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)  # the facts table as the first schema had it: none of the newer columns
    newer = {name for name, _ in _NEW_COLUMNS["facts"]}
    table = _SCHEMA.split("CREATE TABLE IF NOT EXISTS facts (")[1].split(");")[0]
    kept = [line.split("--")[0].strip().rstrip(",") for line in table.strip().splitlines()]
    kept = [column for column in kept if column.split()[0] not in newer]
    raw.execute(f"CREATE TABLE facts ({', '.join(kept)})")
    raw.execute("INSERT INTO facts (user, text, text_key, embedding, importance, created, last_used) "
                "VALUES ('ada', 'Ada has a cat.', 'k', ?, 1, 0, 0)", (unit(1, 0, 0, 0).tobytes(),))
    raw.commit()
    raw.close()
    store = FactStore(path, dimension=4, encoder="test", clock=clock)
    columns = {row[1] for row in store.connection.execute("PRAGMA table_info(facts)")}
    assert newer <= columns
    [old] = store.facts("ada", include_inactive=True)
    assert (old.text, old.status, old.expires_at, old.context) == ("Ada has a cat.", "active", None, None)
    store.close()
