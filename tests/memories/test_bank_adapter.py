"""The `bank` memory's own parts (memories/bank.py, beside test_bank.py's end-to-end tests): which fusion
reads through what, option checks, the latent reader and fact vectors computed by hand, state files of a
bank in memory and on a database file, segments written without a tokenizer, provenance and reset."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

import memlm


@pytest.mark.parametrize("fusion", ["prompt", "latent", "both"])
def test_the_fusion_decides_what_the_bank_reads_through(tokenizer, fusion):
    config = memlm.BankConfig(encoder="backbone", fusion=fusion)
    assert config.uses_prompt is (fusion != "latent") and config.uses_latent is (fusion != "prompt")
    bank = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer).memories["bank"]
    assert (bank.reader is not None) is config.uses_latent
    assert bank.needs_training() is (fusion == "latent")  # prompt fusion works untrained
    assert (bank.graph_blocker() is not None) is config.uses_latent
    messages = [{"role": "user", "content": "cat?"}]
    bank.learn("The user's cat is called Miso.", importance=1.0)
    fused, used = bank.augment_messages(messages, query="cat called")
    assert (len(used), fused is messages) == ((1, False) if config.uses_prompt else (0, True))


def test_bank_options_out_of_range_are_refused():
    for options, message in (({"encoder": "bert"}, "encoder must be one of"), ({"fusion": "cross"}, "fusion must be"),
                             ({"latent_top_k": 0}, "latent_top_k must be a positive integer, got 0"),
                             ({"latent_top_k": 2.0}, "latent_top_k"), ({"fact_token_bias": 20.5}, "fact_token_bias")):
        with pytest.raises(memlm.ConfigError, match=message):
            memlm.BankConfig(**options)
    memlm.BankConfig(latent_top_k=1, fact_token_bias=20.0)
    memlm.BankConfig(fact_token_bias=0.0)


def test_the_latent_reader_attends_over_the_top_k_facts_through_its_gate():
    from memlm.memories.bank import LatentReader

    torch.manual_seed(0)
    reader = LatentReader(4)
    with torch.no_grad():
        reader.gate.copy_(torch.tensor([0.5, -1.0, 2.0, 1.0]))
    hidden, facts = torch.randn(3, 4), torch.randn(5, 4)
    queries, keys, values = hidden @ reader.query.weight.T, facts @ reader.key.weight.T, facts @ reader.value.weight.T
    scores = queries @ keys.T / 2.0  # sqrt(4)
    for top_k in (2, 5, 9):  # 9: more than there are facts
        expected = torch.empty(3, 4)
        for t in range(3):
            best = scores[t].topk(min(top_k, 5)).indices
            weights = scores[t, best].softmax(-1)
            expected[t] = hidden[t] + reader.gate * (weights[:, None] * values[best]).sum(0)
        torch.testing.assert_close(reader(hidden, facts, top_k), expected)
    assert not any(p.bias is not None for p in (reader.query, reader.key, reader.value))
    assert torch.equal(LatentReader(4).gate, torch.zeros(4))  # untrained, it adds nothing


def test_a_fact_vector_weights_later_positions_more_and_has_unit_norm():
    import numpy as np

    from memlm.memories.bank import _unit_rows, position_weighted_mean

    hidden = torch.tensor([[1.0, 0.0], [0.0, 3.0], [6.0, 3.0]])
    torch.testing.assert_close(position_weighted_mean(hidden), torch.tensor([(1 + 18) / 6, (6 + 9) / 6]))
    unit = _unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 1e-7]]))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0], [0.0, 0.1]])  # no division by zero


def test_a_bank_on_a_database_file_saves_only_where_it_lives(tokenizer, tmp_path):
    import json

    store = tmp_path / "facts.sqlite"
    config = memlm.BankConfig(encoder="backbone", store=str(store), importance="constant")
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    bank.learn("the sky is green here")
    memory_model.save_state(tmp_path / "state")
    saved = json.loads((tmp_path / "state" / "bank" / "store.json").read_text())
    assert saved == {"store": str(store.resolve()), "encoder": "backbone:llama:32"}
    assert not (tmp_path / "state" / "bank" / "facts.sqlite").exists()
    bank.learn("a second fact")
    memory_model.load_state(tmp_path / "state")
    assert bank.summary() == {"user": "default", "facts": 2, "users": 1, "encoder": "backbone:llama:32",
                              "fusion": "both", "store": str(store)}  # loading never rolls a live store back
    (tmp_path / "state" / "bank" / "store.json").write_text(json.dumps({"where": str(store)}))
    with pytest.raises(memlm.CorruptedFileError, match="not a bank store reference"):
        memory_model.load_state(tmp_path / "state")


def test_a_bank_in_memory_saves_a_snapshot_with_its_extent(tokenizer, tmp_path):
    config = memlm.BankConfig(encoder="backbone", importance="constant")
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    bank.learn("the sky is green here")
    bank.learn("the sea is red there")
    extent = bank.state_tensors()["extent"]
    assert extent.dtype == torch.int64 and extent.tolist() == [2, bank.store.version("default")]
    memory_model.save_state(tmp_path)
    assert (tmp_path / "bank" / "facts.sqlite").is_file() and not (tmp_path / "bank" / "facts.sqlite.tmp").exists()
    bank.learn("a third fact")
    memory_model.load_state(tmp_path)
    assert sorted(f.text for f in bank.store.facts("default")) == ["the sea is red there", "the sky is green here"]
    with torch.no_grad():
        bank.reader.gate.fill_(1.0)
    probe = torch.tensor([[5, 6, 7, 8]])
    read = memory_model(probe, write_memory=False).logits  # the latent read sees the restored facts
    with torch.no_grad():
        bank.reader.gate.zero_()
    assert not torch.allclose(read, memory_model(probe, write_memory=False).logits, atol=1e-4)
    with pytest.raises(memlm.CorruptedFileError, match="expected \\(2,\\)"):
        bank.check_state_tensors({"extent": torch.tensor([1, 2, 3])})
    (tmp_path / "bank" / "facts.sqlite").unlink()
    with pytest.raises(memlm.CorruptedFileError, match="missing"):
        memory_model.load_state(tmp_path)
    assert bank.summary()["facts"] == 2 and bank.summary()["store"] == "in memory"


def test_segments_written_without_a_tokenizer_are_named_by_their_token_ids():
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt"))
    bank = memory_model.memories["bank"]
    memory_model.write(torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]]),
                       attention_mask=torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]))
    facts = bank.store.facts("default")
    assert sorted((f.text, f.category) for f in facts) == [("tokens: 11 12 13", "segment"),
                                                           ("tokens: 30 31 32 33", "segment")]
    assert bank.store.latents("default")[0] == []  # prompt fusion keeps no latent vectors
    with pytest.raises(memlm.ConfigError, match="needs a tokenizer"):
        bank.loss_improvement("x")


def test_a_segment_given_as_embeddings_is_named_by_its_length():
    # A forward pass given `inputs_embeds` has no ids to decode: the fact names the segment's valid length.
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt"))
    bank = memory_model.memories["bank"]
    embeddings = memory_model.backbone.get_input_embeddings()(torch.tensor([[5, 6, 7], [8, 9, 10]]))
    memory_model(inputs_embeds=embeddings, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), write_memory=True)
    assert sorted(f.text for f in bank.store.facts("default")) == ["segment of 2 tokens", "segment of 3 tokens"]


def test_only_latent_fusion_gives_a_reason_against_a_captured_decode_graph():
    latent_reason = "latent fusion picks each row's facts on the host at every step"
    for fusion, reason in (("prompt", None), ("latent", latent_reason)):
        bank = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion=fusion)).memories["bank"]
        assert bank.graph_blocker() == reason


def test_set_provenance_checks_the_user_and_reset_forgets_only_that_users_facts(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    bank.set_provenance(user="ada", session="monday")
    assert (bank.user, bank.facts.session) == ("ada", "monday")
    bank.learn("ada likes tea")
    with pytest.raises(memlm.ConfigError, match=r"\buser id\b"):  # the label as a phrase of its own
        bank.set_provenance(user="ada\n")
    bank.set_provenance(user="bob")
    assert bank.facts.session == "monday"
    coffee = bank.learn("bob likes coffee").fact
    bank.reset()
    assert bank.summary()["facts"] == 0
    assert bank.store.history(coffee.id)[-1].actor == "reset"  # the audit trail says who deleted it
    bank.set_provenance(user="ada")
    assert [f.text for f in bank.store.facts("ada")] == ["ada likes tea"]


def test_the_fact_bank_api_on_the_memory_itself(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    [learned] = bank.learn_text("the sky is green here")
    assert learned.stored and (learned.fact.text, learned.fact.source) == ("the sky is green here",) * 2
    bank.learn("the sea is red there")
    bank.learn("bob has a dog", user="bob")
    assert len(bank.retrieve("the sky is green", k=1)) == 1 and len(bank.retrieve("the sky is green", k=2)) == 2
    assert [r.fact.text for r in bank.retrieve("a dog", user="bob")] == ["bob has a dog"]
    sea = [r.fact.text for r in bank.retrieve("the sky is green", accept=lambda fact: "sea" in fact.text)]
    assert sea == ["the sea is red there"]  # the fact bank's options pass through
    assert bank.observe_turn("Green tea is the best drink.", None) == []  # no fact by the rules; a judge may add it
    [judged] = bank.observe_turn("Green tea is the best drink.", None, judge=lambda sentence: True)
    assert judged.stored and judged.fact.source == "user: Green tea is the best drink."
    [turn] = bank.observe_turn("My cat is called Miso.", "Nice!")
    assert turn.stored and turn.fact.source == "user: My cat is called Miso.\nassistant: Nice!"


def test_the_fact_token_bonus_has_a_row_for_every_row_of_the_announced_batch(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    bank.learn("The user's cat is called Miso.", importance=1.0)
    bank.reset(batch_size=3)  # forgets the facts of the current user...
    bank.learn("The user's cat is called Miso.", importance=1.0)
    _, used = bank.augment_messages([{"role": "user", "content": "cat?"}], query="cat called", row=1)
    [bonus] = bank.logits_processors()
    assert len(used) == 1 and len(bonus.rows) == 3  # ...and announces 3 rows: the bonus is for row 1 only
    assert bonus.rows[0].numel() == bonus.rows[2].numel() == 0 and bonus.rows[1].numel() > 0
    assert bank.logits_processors() == []  # for one generate call only


def test_segments_are_decoded_without_special_tokens_or_control_characters(tokenizer):
    from tiny import EOS_ID

    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    for text in ("hello world", "ring\abell", "\a\a"):
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        memory_model.write(torch.cat([ids, torch.tensor([[EOS_ID]])], dim=1))
    assert [f.text for f in bank.store.facts("default")] == ["hello world", "ring bell", "(blank segment)"]


def test_facts_of_no_row_serve_every_row_in_latent_fusion(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    with torch.no_grad():
        bank.reader.gate.fill_(1.0)
    memory_model.write(torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]]))  # a fact for row 0, one for row 1
    probe = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    rows_only = memory_model(probe, write_memory=False).logits
    shared = bank.learn("the sky is green here").fact  # no row: every row's
    with_shared = memory_model(probe, write_memory=False).logits
    for row in (0, 1):
        assert not torch.allclose(with_shared[row], rows_only[row], atol=1e-4), row
    bank.store.delete([shared.id], "default")
    torch.testing.assert_close(memory_model(probe, write_memory=False).logits, rows_only)


def test_latent_fusion_reads_in_the_backbones_dtype(tokenizer):
    memory_model = memlm.attach(tiny_model("llama").to(torch.bfloat16), memlm.BankConfig(encoder="backbone"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    with torch.no_grad():
        bank.reader.gate.fill_(1.0)
    bank.learn("the sky is green here", importance=1.0)
    assert memory_model(torch.tensor([[5, 6, 7]]), write_memory=False).logits.dtype == torch.bfloat16
