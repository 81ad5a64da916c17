"""The `memlm` command line. Every command's help comes from its docstring: `memlm COMMAND --help`.

Each command, or group of commands, lives in its own module of this package; the options several of
them share are in `options`. Adding a group (e.g. `train`) is one module holding a typer app
plus one `app.add_typer` line below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from memlm.cli import chat, corpus, demo, facts, generate, info, inspect, keys, memory, serve, train
from memlm.cli import eval as evaluation  # the module; bound to `eval` it would hide the builtin here
from memlm.cli import mcp as mcp_command  # the module; `mcp` is also the SDK's package name

app = typer.Typer(
    help="memlm: memory for Hugging Face causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(home: Annotated[Path | None, typer.Option(
        help="directory for everything memlm saves [env: MEMLM_HOME; default: the user data dir]")] = None
         ) -> None:
    """memlm: memory for Hugging Face causal language models."""
    if home is not None:
        os.environ["MEMLM_HOME"] = str(home)


# `memlm --help` lists the commands in this order, then the groups in theirs.
app.command()(generate.generate)
app.command()(chat.chat)
app.command()(info.info)
app.command()(memory.memorize)
app.command()(demo.demo)
app.command()(inspect.inspect)
app.command()(train.train)
app.command()(serve.serve)
app.command("mcp")(mcp_command.mcp)
app.add_typer(evaluation.app, name="eval")
app.add_typer(corpus.app, name="corpus")
app.add_typer(memory.app, name="memory")
app.add_typer(facts.app, name="facts")
app.add_typer(keys.app, name="keys")
