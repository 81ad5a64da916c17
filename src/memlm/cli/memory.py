"""A session's key/value memory: `memlm memorize` writes text into it; the `memlm memory` group lists,
searches, deletes, exports and counts what it holds, with each item's provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memlm.cli.options import (
    BackboneOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    LimitOpt,
    MemoryConfigOpt,
    MemoryOpt,
    build_model,
    console,
    friendly_errors,
    memory_specs,
    read_text,
    state_line,
)

app = typer.Typer(help="List, search, delete and export what a saved memory holds.", no_args_is_help=True)

StoreSessionOpt = Annotated[str | None, typer.Option(
    "--session", help="the saved session whose memory to open (under MEMLM_HOME)")]
StorePathOpt = Annotated[Path | None, typer.Option(
    "--path", help="a memory store directory instead of a session (e.g. <state dir>/knn)")]
IdsOpt = Annotated[list[int] | None, typer.Option("--id", help="record id (repeatable)")]
RecordSessionOpt = Annotated[str | None, typer.Option("--record-session", help="records written in this session")]
SequenceOpt = Annotated[int | None, typer.Option(help="records of this sequence (one memorize/generate call)")]
TextOpt = Annotated[str | None, typer.Option(help="records whose text contains this (case-insensitive)")]
RecordUserOpt = Annotated[str | None, typer.Option("--user", "-u", help="records of this user")]


@friendly_errors
def memorize(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="UTF-8 text file to memorize")],
    session: Annotated[str, typer.Option(help="session whose memory receives the text")],
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    segment_length: Annotated[int, typer.Option(min=2, help="tokens per segment (the context window)")] = 512,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Stream FILE through the model in segments and store it in SESSION's memory (default:
    knn-joint), with a progress bar; the memory is saved with provenance for `memlm memory`."""
    from memlm.paths import session_dir

    text = read_text(file)
    specs = memory_specs(memory, memory_config) or ["knn-joint"]
    memory_model, _ = build_model(backbone, device, dtype, specs, None)
    directory = session_dir(session)
    if (directory / "memory_state.safetensors").exists():
        memory_model.load_state(directory)
    memory_model.set_provenance(session=session)
    segments = memory_model.memorize(text, segment_length=segment_length, progress=True)
    memory_model.save_state(directory)
    console.print(f"memorized {file} in {segments} segment(s) into session {session!r} ({directory}); "
                  f"{state_line(memory_model)}", highlight=False)


def _open_store(session: str | None, path: Path | None) -> Any:
    from memlm.paths import session_dir
    from memlm.store import KeyValueStore

    if (session is None) == (path is None):
        raise typer.BadParameter("give exactly one of --session or --path")
    directory = path if path is not None else session_dir(session) / "knn"
    try:
        return KeyValueStore.load(directory)
    except FileNotFoundError:
        raise typer.BadParameter(f"no saved memory store in {directory}") from None


def _filter(ids: list[int] | None = None, record_session: str | None = None, sequence: int | None = None,
            text: str | None = None, user: str | None = None) -> Any:
    from memlm.store import RecordFilter

    return RecordFilter(ids=ids or None, session=record_session, sequence=sequence, text=text, user=user)


def _print_records(records: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([record.to_dict() for record in records], indent=2, ensure_ascii=False))
        return
    table = Table()
    for column in ("id", "kind", "layer", "session", "seq", "pos", "text"):
        table.add_column(column)
    for record in records:
        table.add_row(str(record.id), record.kind, str(record.layer), str(record.session), str(record.sequence),
                      str(record.position), repr(record.text)[1:-1][:60])
    console.print(table)


@app.command("list")
@friendly_errors
def memory_list(session: StoreSessionOpt = None, path: StorePathOpt = None, ids: IdsOpt = None,
                record_session: RecordSessionOpt = None, sequence: SequenceOpt = None, text: TextOpt = None,
                user: RecordUserOpt = None,
                limit: LimitOpt = 20, offset: Annotated[int, typer.Option(min=0)] = 0,
                as_json: JsonOpt = False) -> None:
    """List stored items with their provenance, oldest first."""
    store = _open_store(session, path)
    _print_records(store.records.select(_filter(ids, record_session, sequence, text, user), limit, offset), as_json)


@app.command("search")
@friendly_errors
def memory_search(query: Annotated[str, typer.Argument(help="text to look for in the stored spans")],
                  session: StoreSessionOpt = None, path: StorePathOpt = None,
                  limit: LimitOpt = 20,
                  as_json: JsonOpt = False) -> None:
    """Find stored items whose source text contains QUERY (case-insensitive)."""
    store = _open_store(session, path)
    _print_records(store.records.select(_filter(text=query), limit), as_json)


@app.command("delete")
@friendly_errors
def memory_delete(session: StoreSessionOpt = None, path: StorePathOpt = None, ids: IdsOpt = None,
                  record_session: RecordSessionOpt = None, sequence: SequenceOpt = None, text: TextOpt = None,
                  user: RecordUserOpt = None,
                  everything: Annotated[bool, typer.Option("--all", help="delete every item")] = False) -> None:
    """Delete items (rows and vectors) by id, session, sequence, user or text match; saved atomically."""
    where = _filter(ids, record_session, sequence, text, user)
    if not everything and where == _filter():
        raise typer.BadParameter("say what to delete (--id, --record-session, --sequence, --text, --user) or --all")
    store = _open_store(session, path)
    deleted = store.delete(where)
    store.save(store.directory)
    console.print(f"deleted {deleted} item(s); {len(store)} left")


@app.command("export")
@friendly_errors
def memory_export(output: Annotated[Path, typer.Argument(help="JSONL file to write")],
                  session: StoreSessionOpt = None, path: StorePathOpt = None) -> None:
    """Export every record (provenance and text) as JSON lines."""
    store = _open_store(session, path)
    console.print(f"exported {store.records.export_jsonl(output)} record(s) to {output}")


@app.command("stats")
@friendly_errors
def memory_stats(session: StoreSessionOpt = None, path: StorePathOpt = None, as_json: JsonOpt = False) -> None:
    """Counts per kind, layer and session, vectors per group, backend and capacity."""
    stats = _open_store(session, path).stats()
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    console.print(f"{stats['records']:,} record(s); backend {stats['backend']}; capacity {stats['capacity']}; "
                  f"eviction {stats['eviction']}; in {stats['directory']}", highlight=False)
    table = Table()
    for column in ("kind", "layer", "session", "records", "oldest", "newest"):
        table.add_column(column)
    for group in stats["groups"]:
        table.add_row(*(str(group[c]) for c in ("kind", "layer", "session", "records", "oldest", "newest")))
    console.print(table)


@app.command("memorize")
@friendly_errors
def memory_memorize_users(
    users_file: Annotated[Path, typer.Option("--users-file", exists=True, dir_okay=False, help=(
        "JSON lines, one per user: {\"user\": \"ada\", \"file\": \"ada.txt\"} or {\"user\": ..., \"text\": ...}; "
        "a relative file is read from the users file's folder"))],
    store: Annotated[str | None, typer.Option(
        "--store", help="where each user's memory is saved, as <store>/<user>: a directory, or a postgresql:// "
                        "or milvus:// URL (default: MEMLM_STORE)")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="memorize the users as Ray tasks on the cluster at this address ('local': start one here; "
                      "'auto': the one `ray start` made); the stored memories equal a serial run's")] = None,
    tasks: Annotated[int | None, typer.Option(min=1, help="Ray tasks to split the users into (default: one per "
                                                          "user); each loads the backbone once")] = None,
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    segment_length: Annotated[int, typer.Option(min=2, help="tokens per segment (the context window)")] = 512,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Memorize each user's text into a fresh knn memory saved under the user's name, serially or on Ray."""
    import os

    from memlm.batch import memorize_users
    from memlm.facts.backends import STORE_ENV

    location = store or os.environ.get(STORE_ENV)
    if not location:
        raise typer.BadParameter(f"say where to save the memories (--store or {STORE_ENV})", param_hint="--store")
    jobs = []
    for number, line in enumerate(users_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise typer.BadParameter(f"line {number} is not JSON ({error})", param_hint="--users-file") from None
        if not isinstance(entry, dict) or "user" not in entry or ("text" in entry) == ("file" in entry):
            raise typer.BadParameter(f"line {number} needs \"user\" and one of \"text\" or \"file\"",
                                     param_hint="--users-file")
        text = entry.get("text")
        if text is None:
            text = read_text(users_file.parent / entry["file"])
        jobs.append({"user": entry["user"], "text": text})
    summaries = memorize_users(jobs, location, backbone, memory_specs(memory, memory_config) or None,
                               segment_length=segment_length, device=device, dtype=dtype, ray=ray, tasks=tasks)
    if as_json:
        print(json.dumps(summaries, indent=2))
        return
    for summary in summaries:
        console.print(f"{summary['user']}: {summary['segments']} segment(s), {summary['items']} item(s)",
                      highlight=False)
    from memlm.store.backends import redact

    console.print(f"memorized {len(summaries)} user(s) into {redact(location)}", highlight=False)
