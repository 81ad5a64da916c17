"""`memlm facts`: the per-user fact bank that `memlm chat --user` reads and writes, from the shell."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from memlm.cli.options import JsonOpt, LimitOpt, console, friendly_errors

app = typer.Typer(help="The per-user fact bank shared by `memlm chat --user` (each user sees only their own).",
                  no_args_is_help=True)
FactsUserOpt = Annotated[str, typer.Option("--user", "-u", help="whose facts")]
FactsPathOpt = Annotated[str | None, typer.Option(
    "--path", "--store", help="fact store: a file or a URL (postgresql://...) "
    "[default: $MEMLM_STORE, else <home>/facts.sqlite]")]
CategoryOpt = Annotated[str | None, typer.Option()]


def _open_facts(path: str | None) -> Any:
    from memlm.facts import FactMemory
    from memlm.facts.backends import default_store
    from memlm.paths import facts_path

    return FactMemory(path or default_store(facts_path()))


def _print_facts(facts: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(facts))
        return
    table = Table()
    for column in ("id", "category", "memory", "importance", "score"):
        table.add_column(column)
    for fact in facts:
        score = f"{fact['score']:.3f}" if "score" in fact else ""
        table.add_row(str(fact["id"]), fact["category"] or "-", fact["memory"], f"{fact['importance']:.3f}", score)
    console.print(table)


@app.command("add")
@friendly_errors
def facts_add(text: Annotated[str, typer.Argument(help="a message (facts are extracted) or, with --raw, a fact")],
              user: FactsUserOpt, path: FactsPathOpt = None, category: CategoryOpt = None,
              raw: Annotated[bool, typer.Option(help="store the text as one fact, without extraction")] = False,
              as_json: JsonOpt = False) -> None:
    """Remember facts for a user."""
    with _open_facts(path) as memory:
        results = memory.add(text, user=user, category=category, infer=not raw)["results"]
    if as_json:
        console.print_json(json.dumps(results))
    for result in [] if as_json else results:
        console.print(f"{result['event']:4} [{result['id']}] {result['memory']}  ({result['reason']})",
                      highlight=False, markup=False)
    if not results and not as_json:
        console.print("no fact found in that text (use --raw to store it as it is)")


@app.command("list")
@friendly_errors
def facts_list(user: FactsUserOpt, path: FactsPathOpt = None, category: CategoryOpt = None,
               as_json: JsonOpt = False) -> None:
    """List a user's facts."""
    with _open_facts(path) as memory:
        memory.store.require_user(user)  # a mistyped name is worth an error here, not an empty list
        _print_facts(memory.get_all(user=user, category=category)["results"], as_json)


@app.command("search")
@friendly_errors
def facts_search(query: Annotated[str, typer.Argument()], user: FactsUserOpt, path: FactsPathOpt = None,
                 limit: LimitOpt = 5, as_json: JsonOpt = False) -> None:
    """A user's facts ranked for a query (similarity blended with importance)."""
    with _open_facts(path) as memory:
        memory.store.require_user(user)  # a mistyped name is worth an error here, not an empty list
        _print_facts(memory.search(query, user=user, limit=limit, min_similarity=-1.0)["results"], as_json)


@app.command("update")
@friendly_errors
def facts_update(fact_id: Annotated[int, typer.Argument()], text: Annotated[str, typer.Argument()], user: FactsUserOpt,
                 path: FactsPathOpt = None) -> None:
    """Change the text of a fact (its history keeps the old one)."""
    with _open_facts(path) as memory:
        fact = memory.update(fact_id, text, user=user)
    console.print(f"updated [{fact['id']}] {fact['memory']}", highlight=False, markup=False)


@app.command("delete")
@friendly_errors
def facts_delete(user: FactsUserOpt, fact_ids: Annotated[list[int] | None, typer.Argument()] = None,
                 path: FactsPathOpt = None,
                 all_facts: Annotated[bool, typer.Option("--all", help="delete every fact of the user")] = False
                 ) -> None:
    """Delete facts by id (only the user's own), or all of them with --all."""
    with _open_facts(path) as memory:
        if all_facts:
            deleted = memory.delete_all(user=user)["deleted"]
        else:
            deleted = 0
            for fact_id in fact_ids or []:
                memory.delete(fact_id, user=user)
                deleted += 1
    console.print(f"deleted {deleted} fact(s)")


@app.command("history")
@friendly_errors
def facts_history(fact_id: Annotated[int, typer.Argument()], user: FactsUserOpt, path: FactsPathOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Every change of a fact: added, updated, deleted, by whom, when."""
    import datetime as dt

    with _open_facts(path) as memory:
        changes = memory.history(fact_id, user=user)
    if as_json:
        console.print_json(json.dumps(changes))
        return
    for change in changes:
        when = dt.datetime.fromtimestamp(change["time"], dt.timezone.utc).isoformat(timespec="seconds")
        text = change["new_text"] if change["new_text"] is not None else change["old_text"]
        reason = f"  ({change['reason']})" if change.get("reason") else ""
        console.print(f"{when} {change['action']:9} by {change['actor']}: {text}{reason}", highlight=False,
                      markup=False)
