"""FactStore on its own, with 4-d vectors and a fake clock: what each write stores and logs, all-or-nothing
batches, superseding, the per-user indexes kept in step across two handles of one file, and `check()`
finding each kind of damage it names. (The API above it is tested in test_api.py and test_turns.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import memlm
from memlm.errors import CorruptedFileError
from memlm.facts.store import SUPERSEDED, DuplicateFactError, FactNotFoundError, FactStore, UnknownUserError


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
