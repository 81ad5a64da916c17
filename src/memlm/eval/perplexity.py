"""Long-document perplexity: each segment sees only its own window plus what memory retrieves.

The text is cut into consecutive, non-overlapping segments of `window` tokens. Each segment is
scored in one forward pass (reading memory), then written to memory, so segment s can draw on
segments 0..s-1 only through memory. Every token except the first of the document is predicted
exactly once: the first token of each segment is predicted from the previous segment's last
logits (kept from its pass), so all variants score the same tokens. The baseline is the same
procedure with no memory attached: a backbone whose context is capped at `window` tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from memlm.errors import ConfigError
from memlm.model import ConfigSpec, MemoryModel


@dataclass
class PerplexityResult:
    label: str
    perplexity: float
    tokens: int
    segments: int
    window: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def segment_perplexity(model: MemoryModel, input_ids: torch.Tensor, window: int, label: str = "",
                       progress: bool = True) -> PerplexityResult:
    """Perplexity of `input_ids` (1-D) scored segment by segment with `model`'s memories."""
    if window < 2:
        raise ConfigError(f"window must be at least 2 tokens, got {window}")
    input_ids = input_ids.reshape(-1).to(model.layout.device)
    model.reset()
    model._begin_call()
    started = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    previous_last_logits: torch.Tensor | None = None
    starts = range(0, input_ids.shape[0], window)
    for start in tqdm(starts, desc=f"perplexity {label}".strip(), unit="segment", disable=not progress):
        segment = input_ids[start: start + window].unsqueeze(0)  # (1, T)
        logits = model(input_ids=segment, use_cache=False).logits[0].float()  # (T, V); reads, then writes
        log_probs = logits.log_softmax(-1)
        targets = segment[0, 1:]
        nll = -log_probs[:-1].gather(1, targets.unsqueeze(-1)).sum()
        if previous_last_logits is not None:  # the first token, predicted by the previous segment
            nll = nll - previous_last_logits.log_softmax(-1)[segment[0, 0]]
            total_tokens += 1
        total_nll += float(nll)
        total_tokens += targets.shape[0]
        previous_last_logits = logits[-1]
    return PerplexityResult(label=label, perplexity=math.exp(total_nll / max(total_tokens, 1)), tokens=total_tokens,
                            segments=len(starts), window=window, seconds=time.perf_counter() - started)


@torch.no_grad()
def context_perplexity(model: Any, input_ids: torch.Tensor, window: int, context: int, progress: bool = True
                       ) -> PerplexityResult:
    """Reference without memory: score the same segments, each with up to `context` tokens of real
    context in front (a sliding window). This is what memory could at best recover."""
    if context < window:
        raise ConfigError(f"context ({context}) must be at least the window ({window})")
    input_ids = input_ids.reshape(-1).to(next(model.parameters()).device)
    started = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    starts = range(0, input_ids.shape[0], window)
    for start in tqdm(starts, desc=f"perplexity context-{context}", unit="segment", disable=not progress):
        first = max(0, start - (context - window))
        chunk = input_ids[first: start + window].unsqueeze(0)
        log_probs = model(input_ids=chunk, use_cache=False).logits[0].float().log_softmax(-1)
        scored_from = max(start - first, 1)  # predict every token of this segment that has a predecessor
        targets = chunk[0, scored_from:]
        total_nll -= float(log_probs[scored_from - 1: -1].gather(1, targets.unsqueeze(-1)).sum())
        total_tokens += targets.shape[0]
    return PerplexityResult(label=f"context-{context}", perplexity=math.exp(total_nll / max(total_tokens, 1)),
                            tokens=total_tokens, segments=len(starts), window=window,
                            seconds=time.perf_counter() - started)


def compare_perplexity(backbone: Any, tokenizer: Any, text: str, window: int,
                       variants: dict[str, Sequence[ConfigSpec]], max_tokens: int | None = None,
                       progress: bool = True, reference_context: int | None = None) -> dict[str, Any]:
    """Baseline (no memory) and each memory variant on the same tokens, side by side; with
    `reference_context`, also the no-memory sliding-window reference (`context_perplexity`)."""
    input_ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        input_ids = input_ids[:max_tokens]
    results = {}
    for label, specs in {"baseline": [], **variants}.items():
        model = MemoryModel(backbone, specs, tokenizer=tokenizer)
        try:
            results[label] = segment_perplexity(model, input_ids, window, label, progress).to_dict()
        finally:
            model.detach()
    if reference_context is not None:
        reference = context_perplexity(backbone, input_ids, window, reference_context, progress)
        results[reference.label] = reference.to_dict()
    baseline = results["baseline"]["perplexity"]
    for result in results.values():
        result["change_vs_baseline"] = result["perplexity"] / baseline - 1
    return {"window": window, "tokens": int(input_ids.shape[0]), "baseline_ppl": baseline, "results": results}
