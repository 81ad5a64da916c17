"""`memlm info`: the backbone, the attached memories, their parameter counts and state."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from memlm.cli.options import (
    AdapterOpt,
    BackboneOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MemoryConfigOpt,
    MemoryOpt,
    build_model,
    console,
    friendly_errors,
    memory_specs,
)


@friendly_errors
def info(
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    adapter: AdapterOpt = None,
    session: Annotated[str | None, typer.Option(help="also load this session's memory state")] = None,
    as_json: JsonOpt = False,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Show the backbone, the attached memories, their parameter counts and state."""
    from memlm.paths import cache_dir, home_dir, session_dir
    from memlm.registry import available_mechanisms, available_presets

    memory_model, _ = build_model(backbone, device, dtype, memory_specs(memory, memory_config), adapter)
    if session is not None:
        memory_model.load_state(session_dir(session))
    description = memory_model.describe()
    description["paths"] = {"home": str(home_dir()), "cache": str(cache_dir())}
    description["available_mechanisms"] = available_mechanisms()
    description["presets"] = available_presets()
    if as_json:
        print(json.dumps(description, indent=2))
        return
    backbone_info = description["backbone"]
    table = Table(title="memlm", show_header=False)
    table.add_row("backbone", f"{backbone_info['name']} ({backbone_info['model_type']}, "
                  f"{backbone_info['num_layers']} layers, width {backbone_info['hidden_size']})")
    table.add_row("backbone parameters", f"{backbone_info['parameters']:,}")
    table.add_row("device / dtype", f"{backbone_info['device']} / {backbone_info['dtype']}")
    for name, entry in description["memories"].items():
        options = {k: v for k, v in entry["config"].items() if k != "mechanism"}
        table.add_row(f"memory: {name}", f"{entry['parameters']:,} parameters; {options}")
        table.add_row(f"  state of {name}", str(entry["state"]))
    if not description["memories"]:
        table.add_row("memories", "none attached (use --memory)")
    table.add_row("mechanisms available", ", ".join(description["available_mechanisms"]))
    table.add_row("presets", ", ".join(description["presets"]))
    table.add_row("home", description["paths"]["home"])
    table.add_row("cache", description["paths"]["cache"])
    console.print(table)
