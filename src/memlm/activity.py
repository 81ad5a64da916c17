"""Memory activity over time, traced segment by segment and drawn as one PNG (`memlm inspect`).

For every attached memory that can show its activity (`Inspectable`), after each segment written:

* `recurrent`: the GRU state's norm per update, and its most active units as a heat map;
* `slots`: how far each slot of each layer has moved from its initial value, per segment;
* `importance`: every token's score along the stream, the threshold, and the tokens kept.

Example:
    >>> trace = trace_activity(model, "A long text ...", segment_length=256)
    >>> plot_activity(trace, "activity.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memlm.errors import ConfigError
from memlm.memories.base import Inspectable
from memlm.model import MemoryModel

TOP_UNITS = 16


@dataclass
class ActivityTrace:
    """What each inspectable memory showed after each segment, and the segments' text."""

    segments: list[str] = field(default_factory=list)
    snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@torch.no_grad()
def trace_activity(model: MemoryModel, text: str | torch.Tensor, segment_length: int = 256) -> ActivityTrace:
    """Write `text` (or (1, T) token ids) to `model`'s memories segment by segment, recording each
    inspectable memory's activity after every segment."""
    inspectable = {name: memory for name, memory in model.memories.items() if isinstance(memory, Inspectable)}
    if not inspectable:
        raise ConfigError(f"none of the attached memories ({', '.join(model.memories) or 'none'}) can show "
                          f"activity; inspect recurrent, slots or importance")
    if isinstance(text, str):
        if model.tokenizer is None:
            raise ConfigError("tracing text needs a tokenizer: attach(model, ..., tokenizer=tok)")
        input_ids = model.tokenizer(text, return_tensors="pt").input_ids
    else:
        input_ids = text.reshape(1, -1)
    if input_ids.shape[1] == 0:
        raise ConfigError("nothing to inspect: the text is empty")
    if segment_length < 1:
        raise ConfigError(f"segment_length must be positive, got {segment_length}")
    trace = ActivityTrace(snapshots={name: [] for name in inspectable})
    model.reset()
    for start in range(0, input_ids.shape[1], segment_length):
        segment = input_ids[:, start:start + segment_length]
        model.write(segment)
        trace.segments.append(model.tokenizer.decode(segment[0]) if model.tokenizer is not None else "")
        for name, memory in inspectable.items():
            trace.snapshots[name].append(memory.activity())
    return trace


def plot_activity(trace: ActivityTrace, path: str | Path, tokenizer: Any = None) -> Path:
    """Draw `trace` as one PNG: a row of panels per memory, segments along the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers = {"recurrent": _draw_recurrent, "slots": _draw_slots, "importance": _draw_importance}
    names = [name for name in trace.snapshots if name in drawers]
    if not names:
        raise ConfigError(f"no activity to draw for {sorted(trace.snapshots)}")
    figure, axes = plt.subplots(len(names), 2, figsize=(14, 3.6 * len(names)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 2.2]})
    for row, name in zip(axes, names, strict=True):
        drawers[name](row, trace.snapshots[name], tokenizer)
    figure.suptitle(f"memory activity over {len(trace.segments)} segment(s)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _draw_recurrent(axes: Any, snapshots: list[dict[str, Any]], _tokenizer: Any) -> None:
    updates = range(1, len(snapshots) + 1)
    axes[0].plot(list(updates), [s["norm"] for s in snapshots], marker="o")
    axes[0].set(title="recurrent: state norm per update", xlabel="update (segment)", ylabel="|m|")
    states = torch.stack([s["state"] for s in snapshots])  # (updates, units)
    top = states.abs().mean(0).topk(min(TOP_UNITS, states.shape[1])).indices.sort().values
    image = axes[1].imshow(states[:, top].T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                           extent=(0.5, len(snapshots) + 0.5, len(top) - 0.5, -0.5))
    axes[1].set(title=f"recurrent: the {len(top)} most active GRU units", xlabel="update (segment)",
                ylabel="unit", yticks=range(len(top)), yticklabels=[str(int(u)) for u in top])
    axes[1].figure.colorbar(image, ax=axes[1], fraction=0.03)


def _draw_slots(axes: Any, snapshots: list[dict[str, Any]], _tokenizer: Any) -> None:
    layers = snapshots[0]["layers"]
    changes = torch.stack([s["slot_change"] for s in snapshots])  # (segments, layers, slots)
    for index, layer in enumerate(layers):
        axes[0].plot(range(1, len(snapshots) + 1), changes[:, index].mean(-1).numpy(), marker="o",
                     label=f"layer {layer}")
    axes[0].set(title="slots: mean change per layer", xlabel="segment", ylabel="|M - M0|")
    axes[0].legend(fontsize=7)
    slots = changes.shape[2]
    image = axes[1].imshow(changes.flatten(1).T.numpy(), aspect="auto", cmap="viridis",
                           extent=(0.5, len(snapshots) + 0.5, len(layers) * slots - 0.5, -0.5))
    for index in range(1, len(layers)):
        axes[1].axhline(index * slots - 0.5, color="white", linewidth=0.8)
    axes[1].set(title="slots: change of every slot (rows grouped by layer)", xlabel="segment",
                yticks=[index * slots + slots / 2 - 0.5 for index in range(len(layers))],
                yticklabels=[f"layer {layer}" for layer in layers])
    axes[1].figure.colorbar(image, ax=axes[1], fraction=0.03)


def _draw_importance(axes: Any, snapshots: list[dict[str, Any]], tokenizer: Any) -> None:
    threshold = snapshots[0]["threshold"]
    kept_counts = [int(s["kept"].sum()) for s in snapshots]
    axes[0].bar(range(1, len(snapshots) + 1), kept_counts)
    axes[0].set(title="importance: tokens kept after each segment", xlabel="segment", ylabel="kept",
                ylim=(0, max(1, *kept_counts) * 1.1))
    offset, labelled = 0, 0
    for index, snapshot in enumerate(snapshots):
        new = slice(snapshot["prefix"], None)  # the segment's own tokens (the prefix was scored already)
        scores, kept = snapshot["scores"][new], snapshot["kept"][new]
        positions = torch.arange(offset, offset + scores.shape[0])
        axes[1].plot(positions.numpy(), scores.numpy(), color=f"C{index % 10}", linewidth=0.8)
        axes[1].scatter(positions[kept].numpy(), scores[kept].numpy(), color="red", s=12, zorder=3,
                        label="kept" if index == 0 else None)
        tokens = snapshot["tokens"][snapshot["prefix"]:]
        for position, token, score, is_kept in zip(positions.tolist(), tokens, scores.tolist(), kept.tolist(),
                                                   strict=True):
            if is_kept and labelled < 40 and tokenizer is not None:
                axes[1].annotate(tokenizer.decode([token]).strip() or repr(tokenizer.decode([token])),
                                 (position, score), fontsize=6, rotation=60, xytext=(0, 4),
                                 textcoords="offset points")
                labelled += 1
        offset += scores.shape[0]
        axes[1].axvline(offset - 0.5, color="grey", linewidth=0.4)
    axes[1].axhline(threshold, color="black", linestyle="--", linewidth=0.8, label=f"threshold {threshold}")
    axes[1].set(title="importance: score of every token (segments in colour; red: kept)", xlabel="token in stream",
                ylabel="score", ylim=(-0.02, 1.08))
    axes[1].legend(fontsize=7, loc="upper right")
