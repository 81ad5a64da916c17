"""Memorizing a corpus for many users: each user's text streamed into a fresh key/value memory,
saved under the user's name at one location (a directory or a postgresql:// / milvus:// URL,
`memlm.store.save_store`) — serially, or fanned out over a Ray cluster (`ray=ADDRESS`).

On Ray each task loads the backbone itself (by name or path: no model crosses the network), memorizes
its users one after another (a fresh memory per user, so ids and records do not depend on which
task a user lands in) and saves them; the driver gathers one summary per user in the input order.
Each task runs torch on `threads` threads, as the serial run does, so the stored vectors are the
serial run's bit for bit (`tests/test_batch.py`). With a directory location every Ray node must see
the same directory; a database location is shared by construction.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from memlm.errors import ConfigError


def _memorize(spec: dict[str, Any], jobs: list[dict[str, str]]) -> list[dict[str, Any]]:
    import torch

    from memlm import MemoryModel, load_backbone
    from memlm.store import save_store

    threads = torch.get_num_threads()
    torch.set_num_threads(spec["threads"])
    try:
        model, tokenizer = load_backbone(spec["backbone"], device=spec["device"], dtype=spec["dtype"], progress=False)
        if tokenizer is None:
            raise ConfigError(f"the backbone {spec['backbone']} has no tokenizer: memorizing text needs one")
        summaries = []
        for job in jobs:
            memory_model = MemoryModel(model, spec["memories"], tokenizer=tokenizer)
            knn = [memory for memory in memory_model.memories.values() if memory.config.mechanism == "knn"]
            if len(knn) != 1:
                raise ConfigError("memorizing for users needs exactly one knn memory among the memories "
                                  f"(got {[m.config.mechanism for m in memory_model.memories.values()]})")
            memory_model.set_provenance(user=job["user"], session=spec["session"])
            segments = memory_model.memorize(job["text"], segment_length=spec["segment_length"], progress=False)
            store = knn[0]._ensure_store()
            save_store(store, spec["location"], job["user"])
            summaries.append({"user": job["user"], "segments": segments, "items": store.records.count(),
                              "vectors": len(store)})
            memory_model.detach()
        return summaries
    finally:
        torch.set_num_threads(threads)


def memorize_users(jobs: Iterable[dict[str, str]], location: str | os.PathLike, backbone: str | None,
                   memories: list[Any] | None = None, segment_length: int = 512, device: str = "cpu",
                   dtype: str | None = None, session: str | None = None, ray: str | None = None,
                   tasks: int | None = None, threads: int = 1, gpus: float | None = None) -> list[dict[str, Any]]:
    """Memorize each job's `text` for its `user` ({"user": ..., "text": ...}) and save each user's
    memory as `<user>` at `location`; returns one summary per user (segments, items, vectors) in the
    input order. `ray`: None runs here, one user after another; "local" starts a Ray cluster on this
    machine; an address ("auto", "ray://host:10001") joins one. `tasks`: Ray tasks the users are
    split into (default: one per user); each loads the backbone once. `gpus`: the share of a GPU each
    Ray task asks for (Ray hides the GPUs from a task that asks for none): default 1/8 on cuda, else 0."""
    from memlm.store.backends import check_store_name

    jobs = [dict(job) for job in jobs]
    for job in jobs:
        if not isinstance(job.get("text"), str) or not job["text"].strip():
            raise ConfigError(f"user {job.get('user')!r} has no text to memorize")
        check_store_name(job.get("user"))
    users = [job["user"] for job in jobs]
    if len(set(users)) != len(users):
        raise ConfigError("a user appears twice among the jobs: give each user's text once")
    spec = {"backbone": backbone, "device": device, "dtype": dtype, "memories": memories or ["knn-joint"],
            "segment_length": segment_length, "session": session, "location": str(location), "threads": threads}
    if ray is None:
        return _memorize(spec, jobs)
    try:
        import ray as ray_module
    except ImportError as error:
        raise ConfigError("--ray needs `pip install memlm[ray]`") from error
    count = max(1, min(len(jobs), tasks or len(jobs)))
    chunks = [jobs[first::count] for first in range(count)]
    started_here = not ray_module.is_initialized()
    if started_here:
        ray_module.init(address=None if ray in ("", "local") else ray, include_dashboard=False,
                        log_to_driver=False, configure_logging=False)
    try:
        if gpus is None:
            gpus = 0.125 if str(device).startswith("cuda") else 0.0
        remote = ray_module.remote(num_cpus=threads, num_gpus=gpus)(_memorize)
        results = ray_module.get([remote.remote(spec, chunk) for chunk in chunks if chunk])
    finally:
        if started_here:
            ray_module.shutdown()
    by_user = {summary["user"]: summary for summaries in results for summary in summaries}
    return [by_user[user] for user in users]
