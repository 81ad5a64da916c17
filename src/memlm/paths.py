"""Where memlm keeps things.

* **home** (`MEMLM_HOME`, or `--home` on the CLI): everything memlm writes on a user's behalf —
  sessions, memory state, adapters. Defaults to the platform's user data directory.
* **cache** (`MEMLM_CACHE`): converted backbones, which can always be rebuilt. Defaults to the
  platform's user cache directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from memlm.errors import ConfigError

APP_NAME = "memlm"
# '@' and '+' too: e-mail addresses are the user ids many apps (and mem0's docs) use, and both are
# portable in file names. fullmatch, not match with `$`: `$` also matches before a trailing newline ("alice\n").
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


def home_dir(override: str | os.PathLike | None = None) -> Path:
    """The directory that holds every user-facing file memlm writes (created on demand)."""
    path = Path(override or os.environ.get("MEMLM_HOME") or platformdirs.user_data_dir(APP_NAME))
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The directory for rebuildable caches such as converted GGUF backbones."""
    path = Path(override or os.environ.get("MEMLM_CACHE") or platformdirs.user_cache_dir(APP_NAME))
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str, what: str = "name") -> str:
    """Session and user names become directory names: allow only a safe, portable alphabet."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_', '-', '@' or '+', "
            "starting with a letter or digit"
        )
    return name


def session_dir(session: str, home: str | os.PathLike | None = None) -> Path:
    """`<home>/sessions/<session>`: the memory state and transcript of one named chat session."""
    return home_dir(home) / "sessions" / check_name(session, "session name")


def user_dir(user: str, home: str | os.PathLike | None = None) -> Path:
    """`<home>/users/<user>`: the chat sessions of one user."""
    return home_dir(home) / "users" / check_name(user, "user id")


def facts_path(home: str | os.PathLike | None = None) -> Path:
    """`<home>/facts.sqlite`: the fact bank every user's chat shares (each user sees only their own)."""
    return home_dir(home) / "facts.sqlite"
