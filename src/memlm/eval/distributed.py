"""Evaluation pairs fanned out over a Ray cluster (`memlm eval --suite ... --ray [ADDRESS]`).

Each (task, contender) pair is one Ray task: the worker loads the backbone itself (by name or path,
so no model crosses the network), runs the pair exactly as the serial harness does and returns its
records; the driver keeps the serial order, so the report is the same as a serial run's. Pairs are
cached under `<out>/pairs/` by the worker that ran them: on a multi-machine cluster `--out` should
be on storage every node sees (otherwise only the driver's report holds the results).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memlm.errors import ConfigError


def _run_pair(spec: dict[str, Any], family: str, task: str, name: str) -> list[dict[str, Any]]:
    import torch

    from memlm import load_backbone
    from memlm.eval.harness import Harness

    torch.set_num_threads(spec["threads"])
    model, tokenizer = load_backbone(spec["backbone"], device=spec["device"], dtype=spec["dtype"], progress=False)
    harness = Harness(model, tokenizer, spec["suite"], spec["contenders"], Path(spec["out_dir"]), spec["window"],
                      spec["backbone_name"], spec["families"], progress=False)
    return harness.pair(family, task, name).records


def ray_records(harness: Any, backbone: str | None, device: str = "cpu", dtype: Any = None,
                address: str | None = None, cpus_per_pair: float = 1.0,
                gpus_per_pair: float | None = None) -> list[dict[str, Any]]:
    """All records of `harness`'s grid, each pair run as a Ray task on the cluster at `address`
    (`None` or "local": a local cluster on this machine; "auto": the one `ray start` made).

    `gpus_per_pair`: the share of a GPU each pair asks Ray for (Ray hides the GPUs from a task that
    asks for none); default 1/8 with a cuda device (decoding a small model leaves a GPU room for
    several pairs at once), else 0."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError("--ray needs `pip install memlm[ray]`") from error
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if address in (None, "", "local") else address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        spec = {"backbone": backbone, "device": device, "dtype": None if dtype is None else str(dtype),
                "suite": harness.suite, "contenders": list(harness.contenders), "out_dir": str(harness.out_dir),
                "window": harness.window, "backbone_name": harness.backbone_name,
                "families": sorted(harness.selected), "threads": max(1, int(cpus_per_pair))}
        if gpus_per_pair is None:
            gpus_per_pair = 0.125 if str(device).startswith("cuda") else 0.0
        remote = ray.remote(num_cpus=cpus_per_pair, num_gpus=gpus_per_pair)(_run_pair)
        pairs = [(family, task, name) for family, task in harness.tasks() for name in harness.contenders]
        futures = [remote.remote(spec, family, task, name) for family, task, name in pairs]
        return [record for records in ray.get(futures) for record in records]
    finally:
        if started_here:
            ray.shutdown()
