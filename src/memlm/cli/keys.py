"""`memlm keys`: API keys of `memlm serve` and `memlm mcp` (stored hashed; a key is shown once)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from memlm.cli.options import JsonOpt, console, friendly_errors

app = typer.Typer(help="API keys of the server (stored hashed in <home>/keys.sqlite; a key is shown once).",
                  no_args_is_help=True)


def _store():  # noqa: ANN202 - local import keeps `memlm --help` light
    from memlm.server.keys import KeyStore, keys_path

    return KeyStore(keys_path())


@app.command("create")
@friendly_errors
def keys_create(user: Annotated[str, typer.Option("--user", "-u", help="the user the key acts for")],
                admin: Annotated[bool, typer.Option(
                    help="an admin key: may act for any user named in a request (user, user_id)")] = False,
                label: Annotated[str | None, typer.Option(help="a note to tell keys apart")] = None) -> None:
    """Make an API key for USER and print it, once: it is stored only as a hash."""
    with _store() as keys:
        key = keys.create(user, "admin" if admin else "user", label)
    print(key)
    typer.echo(f"key {key.split('-')[1]} for user {user!r}{' (admin)' if admin else ''}: store it now, it cannot be "
               "shown again. Send it as 'Authorization: Bearer <key>'.", err=True)


@app.command("list")
@friendly_errors
def keys_list(as_json: JsonOpt = False,
              all_keys: Annotated[bool, typer.Option("--all", help="also list revoked keys")] = False) -> None:
    """List keys: id, user, role, when made and revoked (never the keys themselves)."""
    with _store() as keys:
        rows = keys.list(include_revoked=all_keys)
    if as_json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return

    def when(t: float | None) -> str:
        return "" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    table = Table()
    for column in ("id", "user", "role", "label", "created", "revoked"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.id, row.user, row.role, row.label or "", when(row.created), when(row.revoked))
    console.print(table)


@app.command("revoke")
@friendly_errors
def keys_revoke(key_id: Annotated[str | None, typer.Argument(help="the key's id (or the whole key)")] = None,
                user: Annotated[str | None, typer.Option("--user", "-u", help="revoke every key of this user")] = None
                ) -> None:
    """Revoke a key by id, or all keys of a user; a running server refuses them at once."""
    if (key_id is None) == (user is None):
        raise typer.BadParameter("give a key id or --user, not both")
    with _store() as keys:
        revoked = keys.revoke(key_id=key_id, user=user)
    if not revoked:
        console.print("no active key matched", highlight=False)
        raise typer.Exit(1)
    console.print(f"revoked {revoked} key(s)", highlight=False)
