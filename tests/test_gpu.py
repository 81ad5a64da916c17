"""CUDA + bfloat16 checks. They need a GPU, so CI (CPU only) reports them as skipped; they run on
the lent GPU host (see docs/benchmarks.md for the command)."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_memory_weights, token_batch
from tiny import tiny_model

import memlm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_memory_on_cuda_in_bfloat16(mechanism, tmp_path):
    backbone = tiny_model("llama").to("cuda", torch.bfloat16)
    probe = token_batch(seed=2).cuda()
    with torch.no_grad():
        bare = backbone(probe).logits
    memory_model = memlm.attach(backbone, mechanism)
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in memory_model.memory_parameters())
    memory_model.write(token_batch(seed=1).cuda())
    with torch.no_grad():
        assert torch.equal(memory_model(probe, write_memory=False).logits, bare)
    randomize_memory_weights(memory_model)
    memory_model.save_state(tmp_path)
    memory_model.reset()
    memory_model.load_state(tmp_path)
    options = dict(max_new_tokens=6, do_sample=False, write_memory=False, pad_token_id=257)
    assert torch.equal(memory_model.generate(probe, use_cache=True, **options),
                       memory_model.generate(probe, use_cache=False, **options))


@pytest.mark.integration
def test_default_model_on_cuda_answers_paris():
    from conftest import REAL_CACHE

    model, tokenizer = memlm.load_backbone(device="cuda", cache=REAL_CACHE)
    assert model.dtype == torch.bfloat16
    memory_model = memlm.attach(model, "recurrent", tokenizer=tokenizer)
    encoded = tokenizer("The capital of France is", return_tensors="pt").to("cuda")
    output = memory_model.generate(**encoded, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("names", [[], ["recurrent"], ["slots"], ["importance"], ["bank"],
                                   ["recurrent", "slots", "importance", "bank"]])
def test_graph_decoding_replays_the_static_tokens_and_follows_memory_writes(names, dtype, tokenizer):
    """The CUDA graph gives the static step's tokens exactly (the same kernels), eager's in float32,
    keeps one recorded graph across calls, and reads each call's memory state (written in between)."""
    configs = [memlm.BankConfig(encoder="backbone", fusion="prompt") if name == "bank" else name for name in names]
    memory_model = memlm.attach(tiny_model("llama").to("cuda", dtype), configs, tokenizer=tokenizer)
    randomize_memory_weights(memory_model, scale=0.2)
    options = dict(max_new_tokens=40, do_sample=False, write_memory=False, pad_token_id=257)
    graphs = []
    for turn in range(3):
        memory_model.write(token_batch(batch_size=1, length=12, seed=turn).cuda())
        probe = token_batch(batch_size=1, length=6 + turn, seed=10 + turn).cuda()
        graph = memory_model.generate(probe, decode="graph", **options)
        assert memory_model.greedy_decoder.last_path == "graph"
        assert torch.equal(graph, memory_model.generate(probe, decode="static", **options))
        if dtype == torch.float32:
            assert torch.equal(graph, memory_model.generate(probe, **options))
        [session] = memory_model.greedy_decoder.sessions.values()
        graphs.append(session.graph)
    assert graphs[0] is graphs[1] is graphs[2]  # recorded once, replayed with each turn's state


@pytest.mark.parametrize("names", [[], ["recurrent", "slots", "importance", "bank"]])
def test_compiled_graph_decoding_on_cuda(names, tokenizer):
    """Inductor's fused step recorded as a CUDA graph: eager's tokens in float32; in bfloat16 it runs
    (fused kernels round differently: benchmarks/fast_decode.py reports how far the tokens agree)."""
    configs = [memlm.BankConfig(encoder="backbone", fusion="prompt") if name == "bank" else name for name in names]
    options = dict(max_new_tokens=40, do_sample=False, write_memory=False, pad_token_id=257)
    for dtype in (torch.float32, torch.bfloat16):
        memory_model = memlm.attach(tiny_model("llama").to("cuda", dtype), configs, tokenizer=tokenizer)
        randomize_memory_weights(memory_model, scale=0.2)
        memory_model.write(token_batch(batch_size=1, length=12).cuda())
        probe = token_batch(batch_size=1, length=6, seed=10).cuda()
        compiled = memory_model.generate(probe, decode="compile", **options)
        assert memory_model.greedy_decoder.last_path == "compile"
        if dtype == torch.float32:
            assert torch.equal(compiled, memory_model.generate(probe, **options))
