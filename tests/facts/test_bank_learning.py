"""`FactBank.learn` without a language model: every argument reaches the stored fact, rows keep their
own duplicates and supersessions, the slot search's order and reasons, and a user's only fact replaced."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import WORDS_DIM, words_bank

from memlm.errors import ConfigError


def test_every_argument_of_learn_reaches_the_stored_fact():
    bank = words_bank(importance="constant")
    embedding = np.zeros(WORDS_DIM, dtype=np.float32)
    embedding[3] = 1.0
    latent = np.arange(4, dtype=np.float32)
    result = bank.learn("The boat is called Kestrel.", "boats", "ada", source="user: my boat is Kestrel",
                        session="s1", row=2, embedding=embedding, latent=latent, spoken="My boat is Kestrel.",
                        expires_at=2_000_000_000.0, metadata={"kind": "boat"}, agent_id="harbour", run_id="r7",
                        context="a chat about boats")
    fact = bank.store.get(result.fact.id)
    assert (fact.category, fact.user, fact.source, fact.session, fact.row) == (
        "boats", "ada", "user: my boat is Kestrel", "s1", 2)
    assert (fact.spoken, fact.expires_at, fact.metadata, fact.agent_id, fact.run_id, fact.context) == (
        "My boat is Kestrel.", 2_000_000_000.0, {"kind": "boat"}, "harbour", "r7", "a chat about boats")
    assert np.array_equal(bank.store.embeddings("ada", [fact.id])[0], embedding)
    _, _, [stored_latent] = bank.store.latents("ada")
    assert np.array_equal(stored_latent, latent)
    assert [change.actor for change in bank.store.history(fact.id, "ada")] == ["learn"]  # the default actor
    other = bank.learn("The cat sleeps all day.", actor="import", embed_text="cat nap")
    assert [change.actor for change in bank.store.history(other.fact.id, "default")] == ["import"]
    assert np.allclose(bank.store.embeddings("default", [other.fact.id])[0], bank.embed(["cat nap"])[0])
    with pytest.raises(ConfigError, match=r"^invalid user id 'no such user!'"):
        bank.learn("A fact.", user="no such user!")


def test_rows_keep_their_own_duplicates_and_supersessions():
    bank = words_bank(importance="constant")
    bank.learn("The user's dog is called Rex.", spoken="My dog is called Rex.", row=0)
    assert bank.learn("The user's dog is called Rex!", spoken="My dog is called Rex!", row=1).stored  # row 1's own
    renamed = bank.learn("The user's dog is called Bruno.", spoken="My dog is called Bruno.", row=1)
    assert [fact.row for fact in renamed.superseded] == [1]  # row 0's Rex stays
    assert [(f.row, f.status) for f in bank.store.facts("default", include_inactive=True)] == [
        (0, "active"), (1, "superseded"), (1, "active")]


def test_a_users_only_fact_can_be_replaced_and_a_plain_fact_has_a_plain_reason():
    bank = words_bank(importance="constant")
    first = bank.learn("The user's dog is called Rex.", spoken="My dog is called Rex.")
    assert first.reason == "importance 1.000"  # nothing superseded: no more to say
    renamed = bank.learn("The user's dog is called Bruno.", spoken="My dog is called Bruno.")
    assert renamed.stored and [f.id for f in renamed.superseded] == [first.fact.id]


def test_every_slot_candidate_is_weighed_and_each_reason_given():
    bank = words_bank(importance="constant", supersede_similarity=0.3)
    dog = bank.learn("The user's dog is called Rex.", spoken="My dog is called Rex.").fact
    cat = bank.learn("The user's cat is called Tom.", spoken="My cat is called Tom.").fact  # the same slot key
    renamed = bank.learn("The user's cat is called Felix.", spoken="My cat is called Felix.")
    assert [f.id for f in renamed.superseded] == [cat.id]  # the dog came first and does not conflict
    assert bank.store.get(dog.id).status == "active"
    home = bank.learn("The user lives in Oslo.", spoken="I live in Oslo.").fact
    moved = bank.learn("The user lives in Berlin now.", spoken="I moved to Berlin.")
    assert [f.id for f in moved.superseded] == [home.id]  # a change supersedes below the cosine threshold
    assert moved.reason.endswith("'oslo' -> 'berlin'; the new statement says it is a change (cosine 0.25)")

