"""What a fact is and what may be one: the `Fact` and `FactChange` rows every backend returns, the
errors of a fact store, and the checks a text, an id, a time or a metadata dict must pass before any
backend writes it (`memlm.facts.store` and `memlm.facts.backends.postgres` share them)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memlm.errors import ConfigError, MemlmError

MAX_FACT_CHARS = 20_000
MAX_SOURCE_CHARS = 200_000
ACTIVE = "active"
SUPERSEDED = "superseded"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UnknownUserError(MemlmError, KeyError):
    """A user that never stored anything in this store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateFactError(ConfigError):
    """The user already has a fact with this text (e.g. another process stored it a moment ago)."""


class FactNotFoundError(MemlmError, KeyError):
    """No fact with this id for this user (another user's fact reads as missing, by design)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Fact:
    id: int
    user: str
    category: str | None
    text: str
    importance: float
    created: float
    last_used: float
    use_count: int
    source: str | None
    session: str | None
    row: int | None
    spoken: str | None = None
    status: str = ACTIVE
    superseded_by: int | None = None
    expires_at: float | None = None
    updated: float | None = None
    metadata: dict[str, Any] | None = None
    agent_id: str | None = None
    run_id: str | None = None
    slot: str | None = None
    context: str | None = None  # words that help find it but are not it (the message before a turn; who spoke)

    def __post_init__(self) -> None:
        if isinstance(self.metadata, str):
            self.metadata = json.loads(self.metadata)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def live(self, now: float) -> bool:
        """Retrievable: active (not superseded) and not expired."""
        return self.status == ACTIVE and not self.expired(now)


@dataclass
class FactChange:
    id: int
    fact_id: int
    user: str
    action: str
    old_text: str | None
    new_text: str | None
    actor: str | None
    time: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search_text(text: str, spoken: str | None = None, context: str | None = None) -> str:
    """What the lexical index holds for a fact: the words around it (`context`), the user's own
    sentence (`spoken`, for chat facts) and its text; every backend indexes the same words."""
    return " ".join(part for part in (context, spoken, text) if part)


def check_text(text: Any, what: str = "fact", limit: int = MAX_FACT_CHARS) -> str:
    """Reject what cannot be a fact: non-strings, bytes, empty, control characters, oversized."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise ConfigError(f"{what} must be text (str), got {type(text).__name__}; decode it first")
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be text (str), got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ConfigError(f"{what} is empty")
    if len(text) > limit:
        raise ConfigError(f"{what} is too long ({len(text):,} characters; limit {limit:,})")
    if CONTROL_CHARACTERS.search(text):
        raise ConfigError(f"{what} contains control characters (binary data?)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigError(f"{what} is not valid Unicode ({error.reason})") from None
    return text


def text_key(text: str) -> str:
    """Key of exact duplicates: case, accents' composition, spacing and final punctuation ignored."""
    normalized = unicodedata.normalize("NFKC", text).casefold()
    normalized = re.sub(r"\s+", " ", normalized).strip().rstrip(".!?;, ")
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()



def check_id(fact_id: Any) -> int:
    """A fact id: an int, or a string of digits (ids come back from JSON and from mem0-style code as text)."""
    if isinstance(fact_id, bool) or not isinstance(fact_id, (int, str, np.integer)):
        raise ConfigError(f"a fact id must be an integer, got {type(fact_id).__name__}")
    if isinstance(fact_id, str):
        # ASCII digits only: str.isdigit() also accepts '²' (which int() refuses) and '٣' (which int() reads as 3)
        if not fact_id.strip().isascii() or not fact_id.strip().isdigit():
            raise ConfigError(f"a fact id must be an integer, got {fact_id!r}")
        fact_id = int(fact_id.strip())
    if not -2**63 <= int(fact_id) < 2**63:  # SQLite's INTEGER: a larger id cannot name a fact
        raise ConfigError(f"a fact id must fit in 64 bits, got {fact_id}")
    return int(fact_id)


def _check_time(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a unix time in seconds (a finite number) or None, got {value!r}")
    return float(value)


def _check_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict) or not all(isinstance(key, str) for key in metadata):
        raise ConfigError(f"metadata must be a dict with string keys, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"metadata must be JSON-serialisable ({error})") from None
    return metadata


def _metadata_json(metadata: dict[str, Any] | None) -> str | None:
    return None if not metadata else json.dumps(_check_metadata(metadata), sort_keys=True, allow_nan=False)
