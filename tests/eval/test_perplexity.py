"""Long-document perplexity (`memlm.eval.perplexity`) against references computed token by token:
which context predicts each token, how many tokens count, and the comparison report."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import memlm
from memlm.eval.perplexity import compare_perplexity, context_perplexity, segment_perplexity

VOCAB = 7


class PositionalBigram(nn.Module):
    """A language model whose logits at position j of what it is given are table[x_j] + j * slope:
    a prediction depends on the token before it and on how much context precedes that token, so a
    wrong context length or a wrong target changes the value."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(VOCAB, VOCAB, generator=generator), requires_grad=False)
        self.slope = torch.randn(VOCAB, generator=generator)
        self.layout = SimpleNamespace(device=torch.device("cpu"))
        self.calls: list[int] = []

    def forward(self, input_ids, use_cache=False):
        self.calls.append(input_ids.shape[1])
        positions = torch.arange(input_ids.shape[1], dtype=torch.float32).view(1, -1, 1)
        return SimpleNamespace(logits=self.table[input_ids] + positions * self.slope)

    def reset(self):
        pass

    def _begin_call(self):
        pass


def nll_of(model: PositionalBigram, context: torch.Tensor, target: int) -> float:
    """-log p(target | context), from the model's last logits over exactly `context`."""
    return -float(model.table[context].add(torch.arange(len(context)).view(-1, 1) * model.slope)[-1]
                  .log_softmax(-1)[target])


def segment_reference(model, tokens: torch.Tensor, window: int) -> float:
    """Token i (i >= 1) of segment s = i // window is predicted from tokens[s * window: i]; the first
    token of a segment from the whole previous segment."""
    total = 0.0
    for i in range(1, len(tokens)):
        start = (i // window) * window
        context = tokens[start:i] if i > start else tokens[start - window:start]
        total += nll_of(model, context, int(tokens[i]))
    return math.exp(total / (len(tokens) - 1))


def context_reference(model, tokens: torch.Tensor, window: int, context: int) -> tuple[float, int]:
    """Token i of segment s is predicted from up to `context - window` tokens before the segment plus
    the segment's tokens before i; a token with nothing before it in its chunk (a segment's first,
    when context == window) is not scored. Returns (perplexity, tokens scored)."""
    total, count = 0.0, 0
    for i in range(1, len(tokens)):
        start = (i // window) * window
        first = max(0, start - (context - window))
        if first == i:
            continue
        total += nll_of(model, tokens[first:i], int(tokens[i]))
        count += 1
    return math.exp(total / count), count


TOKENS = torch.randint(0, VOCAB, (23,), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("window", [2, 4, 5, 23, 40])
def test_segment_perplexity_scores_every_token_but_the_first_once_from_its_own_segment(window):
    model = PositionalBigram()
    result = segment_perplexity(model, TOKENS, window=window, label="x", progress=False)
    assert result.tokens == 22 and result.segments == math.ceil(23 / window) and result.window == window
    assert result.label == "x" and result.seconds >= 0
    assert math.isclose(result.perplexity, segment_reference(model, TOKENS, window), rel_tol=1e-5)
    assert model.calls == [min(window, 23 - start) for start in range(0, 23, window)]  # one pass a segment


@pytest.mark.parametrize("window, context", [(4, 4), (4, 6), (4, 12), (5, 100), (2, 3)])
def test_context_perplexity_gives_each_segment_its_real_preceding_context(window, context):
    model = PositionalBigram(seed=1)
    result = context_perplexity(model, TOKENS, window=window, context=context, progress=False)
    perplexity, tokens = context_reference(model, TOKENS, window, context)
    assert result.tokens == tokens == (22 if context > window else 23 - math.ceil(23 / window))
    assert result.segments == math.ceil(23 / window) and result.label == f"context-{context}"
    assert math.isclose(result.perplexity, perplexity, rel_tol=1e-5)


def test_bad_windows_are_config_errors():
    model = PositionalBigram()
    with pytest.raises(memlm.ConfigError, match="window"):
        segment_perplexity(model, TOKENS, window=1, progress=False)
    with pytest.raises(memlm.ConfigError, match="context"):
        context_perplexity(model, TOKENS, window=8, context=7, progress=False)


def test_compare_perplexity_reports_each_variant_against_the_same_baseline(tokenizer):
    from tiny import tiny_model

    backbone = tiny_model("llama")
    text = "the cat sat on the mat and the dog sat on the log " * 3
    knn_lm = memlm.KnnConfig(attention="off", knn_lm=True, lm_lambda=0.5)  # works untrained: changes the value
    report = compare_perplexity(backbone, tokenizer, text, window=16, variants={"knn": ["knn"], "knn-lm": [knn_lm]},
                                max_tokens=40, progress=False, reference_context=32)
    assert report["window"] == 16 and report["tokens"] == 40
    results = report["results"]
    assert list(results) == ["baseline", "knn", "knn-lm", "context-32"]
    assert [result["label"] for result in results.values()] == list(results)
    assert not math.isclose(results["knn-lm"]["perplexity"], results["baseline"]["perplexity"], rel_tol=1e-3)
    ids = tokenizer(text, return_tensors="pt").input_ids[0, :40]
    baseline = segment_perplexity(memlm.MemoryModel(backbone), ids, window=16, progress=False).perplexity
    assert math.isclose(report["baseline_ppl"], baseline, rel_tol=1e-6)
    assert results["baseline"]["change_vs_baseline"] == 0.0 and results["baseline"]["tokens"] == 39
    assert math.isclose(results["knn"]["perplexity"], baseline, rel_tol=1e-5)  # untrained knn: zero gate
    reference = context_perplexity(backbone, ids, window=16, context=32, progress=False).perplexity
    assert math.isclose(results["context-32"]["perplexity"], reference, rel_tol=1e-6)
    assert math.isclose(results["context-32"]["change_vs_baseline"], reference / baseline - 1, rel_tol=1e-6)
    assert not any(name.startswith("memory.") for name, _ in backbone.named_modules())  # variants detached


def test_compare_perplexity_shows_progress_bars_by_default_and_none_when_asked(tokenizer, capsys):
    from tiny import tiny_model

    backbone, text = tiny_model("llama"), "the cat sat on the mat " * 2
    compare_perplexity(backbone, tokenizer, text, window=8, variants={}, max_tokens=16, reference_context=12)
    shown = capsys.readouterr().err
    assert "perplexity baseline" in shown and "perplexity context-12" in shown  # one bar per pass, by default
    compare_perplexity(backbone, tokenizer, text, window=8, variants={}, max_tokens=16, reference_context=12,
                       progress=False)
    assert "perplexity" not in capsys.readouterr().err
