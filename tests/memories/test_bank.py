"""The `bank` memory: the fact bank connected to a model (importance measured with it, prompt and
latent fusion, segments written as passages, state files)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

import memlm
from memlm.chat import ChatSession


def test_loss_improvement_is_measured_with_the_model(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    improvement = bank.loss_improvement("zq xv kw zq xv kw")
    assert 0.0 <= improvement <= 1.0
    result = bank.learn("zq xv kw zq xv kw")
    assert result.stored and result.importance == pytest.approx(improvement)
    # latent vectors are computed for latent fusion and used by the zero-gated reader
    assert bank.store.latents("default")[0] == [result.fact.id]


def test_a_damaged_bank_state_file_is_refused_and_state_kept(tokenizer, tmp_path):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                                tokenizer=tokenizer)
    memory_model.memories["bank"].learn("the sky is green here")
    memory_model.save_state(tmp_path)
    (tmp_path / "bank" / "facts.sqlite").write_bytes(b"garbage" * 50)
    memory_model.memories["bank"].learn("a second fact")
    with pytest.raises(memlm.CorruptedFileError):
        memory_model.load_state(tmp_path)
    assert memory_model.memories["bank"].summary()["facts"] == 2


def test_chat_puts_retrieved_facts_in_the_prompt_and_learns_from_turns(tokenizer, tmp_path):
    config = memlm.BankConfig(encoder="backbone", store=str(tmp_path / "facts.sqlite"), fusion="prompt")
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer)
    chat = ChatSession(memory_model, tokenizer, user="ada", generation={"max_new_tokens": 3, "do_sample": False})
    chat.ask("Hello! My cat is called Miso.")
    assert [r.status for r in chat.last_learned] == ["stored"]
    assert chat.last_learned[0].fact.source.startswith("user: Hello! My cat is called Miso.")
    assert chat.last_memories == []  # nothing was known before this turn
    messages, used = memory_model.memories["bank"].augment_messages([{"role": "user", "content": "cat name?"}],
                                                                    query="My cat is called")
    assert used[0].fact.text == "The user's cat is called Miso."
    assert messages[0]["role"] == "system" and "Miso" in messages[0]["content"]

    # a restart with another process's view of the same store file; bob sees nothing of ada's
    fresh = memlm.attach(memory_model.detach(), config, tokenizer=tokenizer)
    resumed = ChatSession(fresh, tokenizer, user="ada", generation={"max_new_tokens": 3, "do_sample": False})
    assert resumed.resumed and resumed.turns == 1
    assert fresh.memories["bank"].summary()["facts"] == 1
    bob = ChatSession(fresh, tokenizer, user="bob", generation={"max_new_tokens": 3, "do_sample": False})
    bob.ask("What is my cat called?")
    assert bob.last_memories == [] and fresh.memories["bank"].summary()["facts"] == 0


def test_the_next_reply_is_biased_toward_the_tokens_of_the_facts_in_the_prompt(tokenizer):
    fact = "The user's cat is called Miso."
    fact_tokens = set(tokenizer(fact, add_special_tokens=False).input_ids) | set(
        tokenizer(" " + fact, add_special_tokens=False).input_ids)

    def reply_tokens(bias: float) -> tuple[set[int], list]:
        memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt",
                                                                          fact_token_bias=bias), tokenizer=tokenizer)
        memory_model.memories["bank"].learn(fact, importance=1.0)
        messages, used = memory_model.augment_messages([{"role": "user", "content": "cat?"}], query=fact)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        reply = memory_model.generate(ids, max_new_tokens=12, do_sample=False, write_memory=False)[0, ids.shape[1]:]
        return set(reply.tolist()), memory_model.memories["bank"].logits_processors()

    biased, left_over = reply_tokens(20.0)
    assert biased <= fact_tokens  # a bonus of 20 logits leaves a random model nothing else to say
    assert left_over == []  # the bonus applied to that one generate call only
    unbiased, _ = reply_tokens(0.0)
    assert not unbiased <= fact_tokens
    with pytest.raises(memlm.ConfigError, match="fact_token_bias"):
        memlm.BankConfig(fact_token_bias=-1.0)


def test_segments_written_through_the_model_become_passages(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    memory_model.memorize("alpha beta gamma. " * 8 + "delta epsilon zeta. " * 8, segment_length=40, progress=False)
    bank = memory_model.memories["bank"]
    facts = bank.store.facts("default")
    assert len(facts) >= 3 and all(f.category == "segment" for f in facts)
    assert "".join(f.text for f in facts).replace(" ", "").startswith("alphabetagamma.")
    assert bank.store.latents("default")[0] == [f.id for f in facts]


def test_latent_fusion_reads_only_the_rows_own_facts(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    with torch.no_grad():
        memory_model.memories["bank"].reader.gate.fill_(1.0)
    probe = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    memory_model.write(torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]]))
    first = memory_model(probe, write_memory=False).logits
    memory_model.reset()
    memory_model.write(torch.tensor([[10, 11, 12, 13], [90, 91, 92, 93]]))
    second = memory_model(probe, write_memory=False).logits
    assert torch.allclose(second[0], first[0], atol=1e-6)  # row 0's facts did not change
    assert not torch.allclose(second[1], first[1], atol=1e-3)  # row 1's did
    # beam search repeats each input row: the copies of row 1 read row 1's facts, not row 0's or nothing
    beams = memory_model(probe.repeat_interleave(3, dim=0), write_memory=False).logits
    assert torch.allclose(beams[3:], second[1:].expand(3, -1, -1), atol=1e-5)
    assert torch.allclose(beams[:3], second[:1].expand(3, -1, -1), atol=1e-5)
