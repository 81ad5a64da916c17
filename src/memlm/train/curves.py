"""The training curves figure a run writes beside its logs (`curves.png`), from its CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

LOG_FILE = "log.csv"
EVAL_FILE = "eval.csv"

def plot_curves(output: Path) -> Path | None:
    """`curves.png`: the training loss (and its parts) and the held-out accuracies against steps."""
    log = output / LOG_FILE
    if not log.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    evaluations = []
    if (output / EVAL_FILE).exists():
        with (output / EVAL_FILE).open(encoding="utf-8") as handle:
            evaluations = list(csv.DictReader(handle))
    panels = 3 if evaluations else 2
    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    loss_axis, aux_axis = axes[0][0], axes[0][1]
    for kind in dict.fromkeys(r["kind"] for r in rows):  # one curve per kind of batch (qa1, lm, ...)
        mine = [r for r in rows if r["kind"] == kind]
        loss_axis.plot([int(r["step"]) for r in mine], [float(r["task_loss"]) for r in mine], label=kind,
                       linewidth=1)
        aux_axis.plot([int(r["step"]) for r in mine], [float(r["aux_loss"]) for r in mine], label=kind,
                      linewidth=1)
    loss_axis.set(title="loss on the answers (lm: on the text)", xlabel="step", yscale="log")
    loss_axis.legend(fontsize=7, ncol=2)
    # The auxiliary loss (labels, budget, REINFORCE) may be negative: a linear scale.
    aux_axis.set(title="auxiliary loss of the memories", xlabel="step")
    if evaluations:
        keys = [k for k in evaluations[0] if k != "step"]
        for key in keys:
            axes[0][2].plot([int(e["step"]) for e in evaluations], [float(e[key]) for e in evaluations],
                            marker="o", label=key)
        axes[0][2].set(title="held-out accuracy", xlabel="step", ylim=(-0.02, 1.02))
        axes[0][2].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path = output / "curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
