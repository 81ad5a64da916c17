"""The `bank` memory's own parts (memories/bank.py, beside test_bank.py's end-to-end tests): which fusion
reads through what, option checks, the latent reader and fact vectors computed by hand, state files of a
bank in memory and on a database file, segments written without a tokenizer, provenance and reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_model

import memlm


def reading_bank(tokenizer):
    """A bank on the tiny llama whose latent reader's gate is open (an untrained one reads nothing)."""
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    with torch.no_grad():
        bank.reader.gate.fill_(1.0)
    return memory_model, bank


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
    memory_model, bank = reading_bank(tokenizer)
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


def test_a_written_segment_is_stored_by_write_with_importance_one_and_its_latent_only_for_a_reader(tokenizer):
    for fusion, has_latent in (("both", True), ("prompt", False)):
        memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion=fusion),
                                    tokenizer=tokenizer)
        bank = memory_model.memories["bank"]
        memory_model.write(torch.tensor([[10, 11, 12, 13]]))
        [fact] = bank.store.facts("default")
        assert fact.importance == 1.0 and fact.category == "segment"
        assert [change.actor for change in bank.store.history(fact.id, "default")] == ["write"]
        assert bank.store.latents("default")[0] == ([fact.id] if has_latent else [])


def test_a_minilm_bank_embeds_texts_and_segments_with_minilm(tokenizer):
    from memlm.embeddings import MINILM_DIMENSION

    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="minilm", fusion="prompt"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    vectors = bank.embed(["the sky is green", "the sea is red"])
    assert vectors.shape == (2, MINILM_DIMENSION) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert bank.embed(["the sky is green"])[0] == pytest.approx(vectors[0], abs=1e-5)  # one encoder, reused
    memory_model.write(tokenizer("the sky is green", add_special_tokens=False, return_tensors="pt").input_ids)
    [fact] = bank.store.facts("default")
    stored = bank.store.embeddings("default", [fact.id])[0]
    assert stored == pytest.approx(bank.embed([fact.text])[0], abs=1e-5)  # the text's MiniLM vector, not a latent


def test_state_files_go_into_a_new_nested_folder_and_over_an_earlier_save(tokenizer, tmp_path):
    bank = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                        tokenizer=tokenizer).memories["bank"]
    bank.learn("the sky is green here")
    for _ in range(2):
        bank.save_state_files(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "facts.sqlite").is_file()
    with_file = memlm.BankConfig(encoder="backbone", importance="constant", store=str(tmp_path / "facts.sqlite"))
    live = memlm.attach(tiny_model("llama"), with_file, tokenizer=tokenizer).memories["bank"]
    for _ in range(2):
        live.save_state_files(tmp_path / "c" / "d")
    assert (tmp_path / "c" / "d" / "store.json").is_file()


def test_the_saved_extent_is_the_current_users(tokenizer):
    bank = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                        tokenizer=tokenizer).memories["bank"]
    bank.learn("the sky is green here")
    bank.learn("a fact of someone else", user="bob")
    bank.learn("another of someone else", user="bob")
    assert bank.store.version("default") != bank.store.version()  # the test can tell them apart
    assert bank.state_tensors()["extent"].tolist() == [1, bank.store.version("default")]


def test_prompt_fusion_reads_the_rows_facts_addressed_to_the_user_and_keeps_earlier_rows_bonus(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt",
                                                                      importance="constant"), tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    bank.reset(batch_size=2)
    bank.learn("The user's cat is called Miso.", spoken="My cat is called Miso.", row=0)
    bank.learn("The user's dog is called Rex.", spoken="My dog is called Rex.", row=1)
    messages = [{"role": "user", "content": "pet?"}]
    fused, used = bank.augment_messages(messages, query="what is my pet called", row=1)
    assert [r.fact.text for r in used] == ["The user's dog is called Rex."]  # row 1's fact only
    assert "Your dog is called Rex." in fused[-2]["content"] and "The user's dog" in fused[0]["content"]
    _, used_zero = bank.augment_messages(messages, query="what is my pet called", row=0)
    assert [r.fact.text for r in used_zero] == ["The user's cat is called Miso."]
    bank.augment_messages(messages, query="what is my pet called", row=1)  # row 1 again, after row 0
    [bonus] = bank.logits_processors()
    assert bonus.rows[0].numel() > 0 and bonus.rows[1].numel() > 0  # row 0's bonus stays; row 1's renewed
    bank.augment_messages(messages, query="what is my pet called", row=0)
    bank.augment_messages(messages, query="what is my pet called", row=0)  # row 0 asked again: a new batch
    [bonus] = bank.logits_processors()
    assert bonus.rows[0].numel() > 0 and bonus.rows[1].numel() == 0
    memory_model.memories["bank"].config.fact_token_bias = 0.0
    bank.augment_messages(messages, query="what is my pet called")
    assert bank.logits_processors() == []  # no bonus asked for


def test_segments_are_captured_after_the_final_norm(tokenizer):
    """Their retrieval vector and latent are the segment's own states, not those of its decoded text."""
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    ids = tokenizer("ring\abell", add_special_tokens=False, return_tensors="pt").input_ids  # stored as "ring bell"
    final = memory_model.backbone(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]  # after the norm
    memory_model.write(ids)
    [fact] = memory_model.memories["bank"].store.facts("default")
    from memlm.memories.bank import position_weighted_mean

    expected = position_weighted_mean(final).detach().float().numpy()
    stored = memory_model.memories["bank"].store.embeddings("default", [fact.id])[0]
    assert stored == pytest.approx(expected / np.linalg.norm(expected), abs=1e-5)
    _, _, [latent] = memory_model.memories["bank"].store.latents("default")
    assert latent == pytest.approx(expected, abs=1e-5)


def test_the_bank_names_itself_in_errors_and_passes_learn_arguments_on(tokenizer):
    with pytest.raises(memlm.ConfigError, match=r"^bank: fact_token_bias must"):
        memlm.BankConfig(fact_token_bias=-1.0)
    bank = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone")).memories["bank"]  # no tokenizer
    with pytest.raises(memlm.ConfigError, match=r"^bank: this needs a tokenizer: attach\(model, 'bank', "):
        bank.latent_vectors(["a fact"])
    vector = np.ones(bank.dimension, dtype=np.float32) / np.sqrt(bank.dimension)
    result = bank.learn("the sky is green here", "weather", importance=0.75, embedding=vector)
    assert result.stored and result.fact.category == "weather" and result.fact.importance == 0.75
    assert bank.store.latents("default")[0] == []  # no tokenizer: no latent, and no error


def test_latent_fusion_passes_rows_without_facts_through_and_reads_the_later_ones(tokenizer):
    memory_model, bank = reading_bank(tokenizer)
    probe = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    bare = memory_model(probe, write_memory=False).logits
    bank.reset(batch_size=2)
    bank.learn("a fact of the second row", row=1)
    read = memory_model(probe, write_memory=False).logits
    torch.testing.assert_close(read[0], bare[0])  # row 0 has no facts: untouched
    assert not torch.allclose(read[1], bare[1], atol=1e-4)  # row 1, after it, still reads
    bank.reset()
    bank.learn("a fact of the first row", row=0)  # one stored row, none announced
    one = memory_model(probe[:1], write_memory=False).logits
    assert not torch.allclose(one, bare[:1], atol=1e-4)


def test_the_fact_bonus_follows_rows_and_queries_and_the_speakers_own_words(tokenizer):
    config = memlm.BankConfig(encoder="backbone", fusion="prompt", importance="constant", fact_token_bias=0.5)
    bank = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer).memories["bank"]
    messages = [{"role": "user", "content": "where?"}]
    bank.learn("The user moved to Oslo.", spoken="I moved to Oslo last year.")
    fused, _ = bank.augment_messages(messages, query="where did I move", row=1)  # a fresh bank's first row is 1
    assert "You moved to Oslo last year." in fused[-2]["content"]  # from the user's own sentence
    [bonus] = bank.logits_processors()
    assert bonus.rows[1].numel() > 0  # a bias of 0.5 still gives a bonus
    bank.augment_messages(messages, query="where did I move", row=1)
    bank.augment_messages(messages, query="  ", row=1)  # row 1 asks again, about nothing: its bonus goes
    assert bank.logits_processors() == []
    bank.augment_messages(messages, query="where did I move", row=1)
    bank.augment_messages(messages, query="where did I move")  # no row: a new prompt, earlier rows forgotten
    [bonus] = bank.logits_processors()
    assert bonus.rows[0].numel() > 0 and all(row.numel() == 0 for row in bonus.rows[1:])


def test_no_segment_is_written_while_segment_writes_are_off(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    with bank.segment_writes(False):
        memory_model(torch.tensor([[10, 11, 12, 13]]))
    assert bank.store.facts("default") == []
    memory_model(torch.tensor([[10, 11, 12, 13]]))
    assert len(bank.store.facts("default")) == 1


def test_latent_fusion_changes_only_the_last_layers_output(tokenizer):
    memory_model = memlm.attach(tiny_model("llama", num_layers=3), memlm.BankConfig(encoder="backbone"),
                                tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    layers = memory_model.backbone.model.layers
    outputs: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        layer.register_forward_hook(lambda module, args, output, index=index: outputs.__setitem__(
            index, (output[0] if isinstance(output, tuple) else output).detach().clone()))
    probe = torch.tensor([[5, 6, 7, 8]])
    memory_model(probe, write_memory=False)
    before = dict(outputs)
    with torch.no_grad():
        bank.reader.gate.fill_(1.0)
    bank.learn("the sky is green here", importance=1.0)
    memory_model(probe, write_memory=False)
    for index in range(len(layers) - 1):
        torch.testing.assert_close(outputs[index], before[index])
    assert not torch.allclose(outputs[len(layers) - 1], before[len(layers) - 1], atol=1e-4)


def test_a_bank_on_a_relative_database_path_saves_the_absolute_one(tokenizer, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    config = memlm.BankConfig(encoder="backbone", store="facts.sqlite", importance="constant")
    bank = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer).memories["bank"]
    bank.save_state_files(tmp_path / "state")
    assert json.loads((tmp_path / "state" / "store.json").read_text())["store"] == str(tmp_path / "facts.sqlite")
