"""`memlm inspect`: memory activity over a text, segment by segment, drawn as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memlm.cli.options import (
    AdapterOpt,
    BackboneOpt,
    DeviceOpt,
    DtypeOpt,
    MemoryConfigOpt,
    MemoryOpt,
    build_model,
    console,
    friendly_errors,
    memory_specs,
    read_text,
)


@friendly_errors
def inspect(
    file: Annotated[Path, typer.Argument(help="text file to stream through the memories")],
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("memory-activity.png"),
    segment_length: Annotated[int, typer.Option(min=1, help="tokens per segment")] = 256,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="read only the first this many tokens")] = None,
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    adapter: AdapterOpt = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Draw memory activity over FILE, segment by segment: the GRU state (norm and most active units),
    slot changes per layer, and importance scores with the kept tokens marked [default memories:
    recurrent, slots, importance]."""
    from memlm.activity import plot_activity, trace_activity

    specs = memory_specs(memory, memory_config) if (memory or memory_config or adapter) else [
        "recurrent", "slots", "importance"]
    memory_model, tokenizer = build_model(backbone, device, dtype, specs, adapter)
    input_ids = tokenizer(read_text(file), return_tensors="pt").input_ids[:, :max_tokens]
    trace = trace_activity(memory_model, input_ids.to(memory_model.layout.device), segment_length)
    written = plot_activity(trace, out, tokenizer=tokenizer)
    console.print(f"traced {len(trace.segments)} segment(s) of {input_ids.shape[1]} tokens through "
                  f"{', '.join(trace.snapshots)}; wrote {written}")
