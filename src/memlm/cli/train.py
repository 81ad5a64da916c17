"""`memlm train`: train memories (and a LoRA adapter) from a YAML config; runs resume by themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memlm.cli.options import console, friendly_errors


@friendly_errors
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="training config (see configs/train/)")],
    output: Annotated[Path | None, typer.Option(help="run folder [default: the config's output]")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override train.steps")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="override train.batch_size")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        min=0, help="override train.max_minutes: stop (and save) after this long; 0: no limit")] = None,
    files: Annotated[list[Path] | None, typer.Option(
        "--file", help="your own text file or JSONL chat transcript to train on (repeatable)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's latest checkpoint")] = True,
    device: Annotated[str | None, typer.Option(help="cpu or cuda [default: cuda when available]")] = None,
    backbone: Annotated[str | None, typer.Option(
        "--backbone", "-b", help="override model.backbone (GGUF file, model folder or hub id)")] = None,
) -> None:
    """Train the memories a config describes: segment-recurrent, with a curriculum, checkpoints that
    resume exactly, CSV logs and PNG curves in the run folder; the weights land in <output>/final.
    Several GPUs or processes: `accelerate launch -m memlm.cli train --config ...`, no code change."""
    from memlm.train import TrainConfig, Trainer

    loaded = TrainConfig.from_yaml(config)
    overrides = {}
    if output is not None:
        overrides["output"] = str(output)
    if steps is not None:
        overrides["train.steps"] = steps
    if batch_size is not None:
        overrides["train.batch_size"] = batch_size
    if max_minutes is not None:
        overrides["train.max_minutes"] = max_minutes
    if files:
        overrides["data.files"] = [str(path) for path in files]
    if backbone is not None:
        overrides["model.backbone"] = backbone
    if overrides:
        loaded = loaded.replace(**overrides)
    result = Trainer(loaded, device=device).train(resume=resume)
    console.print(f"trained {result.steps} steps; weights in {result.final}; curves in {result.output / 'curves.png'}")
