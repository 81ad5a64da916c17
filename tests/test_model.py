"""`MemoryModel`: when memories write, how capabilities are used, saving and loading weights and state."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from helpers import hook_counts, randomize_memory_weights, token_batch
from tiny import tiny_model

import memlm
from memlm.model import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, STATE_FILE


def test_crash_during_save_keeps_the_previous_file(tmp_path, monkeypatch):
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    memory_model.write(token_batch())
    good = memory_model.save_state(tmp_path)
    good_bytes = good.read_bytes()
    memory_model.write(token_batch(seed=5))

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("memlm.serialization.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        memory_model.save_state(tmp_path)
    assert good.read_bytes() == good_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary left behind


def test_state_of_other_memories_is_refused(tmp_path):
    from memlm.config import MemoryConfig
    from memlm.memories.base import Memory
    from memlm.registry import register_memory, unregister_memory

    class NullConfig(MemoryConfig):
        mechanism = "null-test"

    class NullMemory(Memory):
        """Does nothing (test only)."""

        config_class = NullConfig

        def attach(self, layout):
            pass

    register_memory(NullMemory)
    try:
        backbone = tiny_model("llama")
        first = memlm.attach(backbone, "null-test")
        first.save_state(tmp_path)
        first.detach()
        with pytest.raises(memlm.IncompatibleMemoryError, match="null-test"):
            memlm.attach(backbone, "recurrent").load_state(tmp_path)
    finally:
        unregister_memory("null-test")


def test_adapter_files_and_config(tmp_path):
    memory_model = memlm.attach(tiny_model("qwen2"), memlm.RecurrentConfig(decay=0.8, memory_size=12))
    memory_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    assert config["backbone"]["hidden_size"] == 32 and config["backbone"]["model_type"] == "qwen2"
    assert config["memories"] == [memory_model.memories["recurrent"].config.to_dict()]
    restored = memlm.MemoryModel.from_pretrained(memory_model.detach(), tmp_path)
    assert restored.memories["recurrent"].config.decay == 0.8


def test_corrupted_adapter_files_are_refused_and_leave_no_hooks(tmp_path):
    backbone = tiny_model("llama")
    memory_model = memlm.attach(backbone, "recurrent")
    randomize_memory_weights(memory_model)
    memory_model.save_pretrained(tmp_path)
    memory_model.detach()
    hooks_before = hook_counts(backbone)

    weights = tmp_path / ADAPTER_WEIGHTS_FILE
    original = weights.read_bytes()
    weights.write_bytes(original[:100])
    with pytest.raises(memlm.CorruptedFileError):
        memlm.MemoryModel.from_pretrained(backbone, tmp_path)
    weights.write_bytes(original)

    (tmp_path / ADAPTER_CONFIG_FILE).write_text("{not json")
    with pytest.raises(memlm.CorruptedFileError, match="JSON"):
        memlm.MemoryModel.from_pretrained(backbone, tmp_path)
    assert hook_counts(backbone) == hooks_before


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    backbone = tiny_model("llama")
    writer = memlm.attach(backbone, memlm.RecurrentConfig(memory_size=8))
    writer.save_pretrained(tmp_path)
    writer.detach()
    config = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    config["memories"][0]["memory_size"] = 16  # config edited, weights not
    (tmp_path / ADAPTER_CONFIG_FILE).write_text(json.dumps(config))
    hooks_before = hook_counts(backbone)
    with pytest.raises(memlm.IncompatibleMemoryError, match="shape"):
        memlm.MemoryModel.from_pretrained(backbone, tmp_path)
    assert hook_counts(backbone) == hooks_before


# --- when memories write ------------------------------------------------------------------------
def test_forward_writes_once_per_call_but_not_on_cached_decode_steps():
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    recurrent = memory_model.memories["recurrent"]
    prompt = token_batch(1, length=6)
    output = memory_model(prompt, use_cache=True)
    assert recurrent.updates == 1
    next_token = output.logits[:, -1:].argmax(-1)
    cache_argument = "cache" if "cache" in inspect.signature(memory_model.backbone.forward).parameters \
        else "past_key_values"  # transformers 5 renamed it
    memory_model(next_token, use_cache=True, **{cache_argument: output.past_key_values})  # a decode step
    assert recurrent.updates == 1
    memory_model(prompt, write_memory=False)
    assert recurrent.updates == 1
    memory_model(prompt)  # a new pass with no cache: one more segment
    assert recurrent.updates == 2


def test_detach_state_cuts_backpropagation_through_earlier_segments():
    memory_model = memlm.attach(tiny_model("llama"), "recurrent")
    randomize_memory_weights(memory_model)
    gru = memory_model.memories["recurrent"].gru
    memory_model.write(token_batch(seed=1))  # segment 1: its update depends on the GRU weights
    memory_model.detach_state()
    memory_model.write(token_batch(seed=2))
    loss = memory_model(token_batch(seed=3), write_memory=False).logits.logsumexp(-1).mean()
    loss.backward()
    after_detach = gru.weight_ih.grad.clone()
    # Without the cut, the same loss also flows through segment 1's update: a different gradient.
    gru.weight_ih.grad = None
    memory_model.reset()
    memory_model.write(token_batch(seed=1))
    memory_model.write(token_batch(seed=2))
    memory_model(token_batch(seed=3), write_memory=False).logits.logsumexp(-1).mean().backward()
    assert not torch.allclose(gru.weight_ih.grad, after_detach)
    assert memory_model.memories["recurrent"].state.requires_grad


def test_context_window_sends_the_earlier_prompt_through_memory_first(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.KnnConfig(attention="joint", layers="all", top_k=64),
                                tokenizer=tokenizer)
    prompt = token_batch(1, length=30, seed=4)
    windowed = memory_model.generate(prompt, context_window=10, max_new_tokens=5, do_sample=False,
                                     write_memory=False, pad_token_id=257)
    assert windowed.shape == (1, 15)  # the last 10 prompt tokens and the reply
    assert torch.equal(windowed[:, :10], prompt[:, 20:])
    stored = memory_model.memories["knn"].store
    assert sorted(r.position for r in stored.records.select()) == list(range(20))  # segments 0-9, 10-19
    # Joint attention over all of memory at true distances is full attention: the same reply as the
    # whole prompt in context.
    memory_model.reset()
    with memory_model.paused() as bare:
        full = bare.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=257)
    assert torch.equal(windowed[:, 10:], full[:, 30:])


# --- capabilities ---------------------------------------------------------------------------------
def test_memories_are_offered_only_the_capabilities_they_declare(tokenizer):
    from memlm.memories.base import FileState, PromptFusion, Provenance, TextLearning

    memory_model = memlm.attach(tiny_model("llama"), ["recurrent", memlm.BankConfig(encoder="backbone"), "knn"],
                                tokenizer=tokenizer)
    names = lambda capability: [m.mechanism for m in memory_model.capable(capability)]  # noqa: E731
    assert names(PromptFusion) == names(TextLearning) == ["bank"]
    assert names(FileState) == names(Provenance) == ["bank", "knn"]
    memory_model.set_provenance(user="ada", session="s1")
    assert memory_model.memories["bank"].user == "ada" and memory_model.memories["knn"].session == "s1"
    learned = memory_model.observe_turn("My cat is called Miso.", "Nice!", turn_ids=token_batch(1, length=8))
    assert [r.fact.text for r in learned] == ["The user's cat is called Miso."]
    assert memory_model.memories["recurrent"].updates == 1  # the others got the turn as one write pass
    assert memory_model.memories["bank"].store.count("ada") == 1  # the bank did not also store the pass


class PrefixConfig(memlm.MemoryConfig):
    mechanism = "prefix-test"


class PrefixMemory(memlm.memories.Memory, memlm.memories.InputRewriting, memlm.memories.AuxiliaryLoss):
    """Puts two fixed tokens in front of every segment (test only) and reports a constant loss."""

    config_class = PrefixConfig
    PREFIX = (7, 8)
    max_prefix_length = len(PREFIX)

    def attach(self, layout):
        self.seen: list[torch.Tensor] = []
        self.track(layout.embeddings.register_forward_hook(lambda _m, args, _o: self.seen.append(args[0])))

    def rewrite_inputs(self, input_ids, attention_mask, position_ids):
        prefix = torch.tensor(self.PREFIX).expand(input_ids.shape[0], -1)
        ids = torch.cat([prefix, input_ids], dim=1)
        mask = torch.cat([torch.ones_like(prefix), attention_mask], dim=1)
        return memlm.memories.SegmentInputs(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), len(self.PREFIX))

    def auxiliary_loss(self, row_losses=None):
        return torch.tensor(0.5) if row_losses is None else row_losses.mean()


def test_input_rewriting_prepends_to_every_segment_but_returns_the_callers_view():
    backbone = tiny_model("llama")
    memory_model = memlm.MemoryModel(backbone)
    memory_model.memories["prefix-test"] = PrefixMemory(PrefixConfig(), memory_model.layout, memory_model.context)
    memory_model.memories["prefix-test"].attach(memory_model.layout)
    prompt = token_batch(2, length=5)
    expected = backbone(torch.cat([torch.tensor([[7, 8]] * 2), prompt], dim=1)).logits[:, 2:]
    output = memory_model(prompt, write_memory=False)
    torch.testing.assert_close(output.logits, expected)  # read with the prefix, logits for the caller's tokens
    generated = memory_model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=257,
                                      write_memory=False)
    assert torch.equal(generated[:, :5], prompt)  # the prefix is not part of what the caller gets back
    full = backbone.generate(torch.cat([torch.tensor([[7, 8]] * 2), prompt], dim=1), max_new_tokens=3,
                             do_sample=False, pad_token_id=257)
    assert torch.equal(generated, full[:, 2:])
    memory_model.write(prompt)
    assert memory_model.memories["prefix-test"].seen[-1][0, :2].tolist() == [7, 8]  # writes see it too
    assert memory_model.auxiliary_loss().item() == 0.5
    assert memory_model.auxiliary_loss(torch.tensor([1.0, 3.0])).item() == 2.0  # each row's loss reaches it
    assert memlm.attach(backbone, "recurrent").auxiliary_loss() is None


def test_a_backbone_carries_one_models_memories_at_a_time():
    """A second MemoryModel on a backbone whose hooks or adapter belong to another is refused by name (both
    models' hooks would run on every pass); after detach() it attaches, and nothing of the first is left."""
    backbone, probe = tiny_model("llama"), token_batch(seed=9)
    with torch.no_grad():
        bare = backbone(input_ids=probe).logits
    first = memlm.attach(backbone, memlm.KnnConfig(attention="joint", layers="all"))
    first.write(token_batch(seed=1))
    with pytest.raises(memlm.ConfigError, match="another MemoryModel"):
        memlm.attach(backbone, "recurrent")
    with pytest.raises(memlm.ConfigError, match="another MemoryModel"):
        memlm.MemoryModel(backbone).add_lora({"r": 2})
    first.add_memory("recurrent")  # more memories on the model that holds the backbone: fine
    first.detach()
    adapted = memlm.MemoryModel(backbone)
    adapted.add_lora({"r": 2})
    with pytest.raises(memlm.ConfigError, match="LoRA adapter"):
        memlm.MemoryModel(backbone).add_lora({"r": 2})
    adapted.detach()
    second = memlm.attach(backbone, memlm.KnnConfig(attention="joint", layers="all"))
    with torch.no_grad():
        torch.testing.assert_close(second(input_ids=probe, write_memory=False).logits, bare)
