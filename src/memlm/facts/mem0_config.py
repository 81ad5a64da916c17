"""mem0's configuration dict (`Memory.from_config(config)`) read as memlm settings.

memlm keeps facts in its own stores and extracts them by rules, so most of what a mem0 config
chooses (an LLM, a graph store, a re-ranker, extraction prompts, a vector database service) has
nothing to configure here. `from_config` keeps what does carry over and says, once, in a
`Mem0ConfigWarning`, which sections it did not use, so code written for mem0 runs unchanged:

* `vector_store` with a `path` (faiss, chroma, qdrant, ...): an SQLite store in that folder
  (`memlm-facts.sqlite`), or that file if the path ends in `.sqlite` / `.db`;
* `vector_store` pgvector (`connection_string`, or `dbname`, `user`, `password`, `host`, `port`):
  the PostgreSQL backend;
* `vector_store` of a service (a host or URL, no path): not used, the default store (`Memory()`'s);
* `embedder` naming an e5 model: `encoder="e5"`; any other model: MiniLM;
* `llm`, `graph_store`, `reranker`, the custom prompts and instructions, `history_db_path`,
  `version`: not used (no LLM in the loop; the history lives in the store);
* `memlm`: `{"store": ..., "encoder": ..., "bank": {FactBankConfig fields}}`, memlm's own settings.

Keys mem0 does not know either are named in the same warning (mem0's config model ignores them);
a section of the wrong type is a `ConfigError`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from memlm.errors import ConfigError

_UNUSED = ("llm", "graph_store", "reranker", "custom_fact_extraction_prompt", "custom_update_memory_prompt",
           "custom_prompt", "custom_instructions", "history_db_path", "version", "api_version", "enable_graph")
_KNOWN = ("vector_store", "embedder", "memlm", *_UNUSED)


class Mem0ConfigWarning(UserWarning):
    """Parts of a mem0 configuration that memlm has no use for (named in the message)."""


def _section(config: dict[str, Any], name: str) -> tuple[str | None, dict[str, Any]]:
    section = config.get(name)
    if section is None:
        return None, {}
    if not isinstance(section, dict):
        raise ConfigError(f"mem0 config: {name!r} must be a dict with 'provider' and 'config', got {section!r:.60}")
    settings = section.get("config") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"mem0 config: {name}['config'] must be a dict")
    provider = section.get("provider")
    return (provider if isinstance(provider, str) else None), settings


def _store_from(provider: str | None, settings: dict[str, Any], unused: list[str]) -> Any:
    """The store location a mem0 `vector_store` section names, or `...` for the default store."""
    if provider in ("pgvector", "postgres", "postgresql"):
        if settings.get("connection_string"):
            return str(settings["connection_string"])
        if settings.get("dbname"):
            user = quote(str(settings.get("user", "")))
            secret = f":{quote(str(settings['password']))}" if settings.get("password") else ""
            host = f"{settings.get('host', 'localhost')}:{settings.get('port', 5432)}"
            return f"postgresql://{user}{secret}@{host}/{settings['dbname']}"
    path = settings.get("path")
    if isinstance(path, str) and path:
        if path.endswith((".sqlite", ".db", ".sqlite3")):
            return path
        return str(Path(path) / "memlm-facts.sqlite")
    if provider is not None:
        unused.append(f"vector_store {provider!r} (memlm uses its own store)")
    return ...


def memory_settings(config: Any) -> dict[str, Any]:
    """The keyword arguments of `FactMemory(...)` that a mem0 config dict amounts to."""
    from memlm.facts.bank import FactBankConfig

    if not isinstance(config, dict):
        raise ConfigError(f"Memory.from_config needs a dict, got {type(config).__name__}")
    unused = [key for key in _UNUSED if config.get(key) not in (None, {}, "")]
    unused += [f"unknown key {key!r}" for key in sorted(set(config) - set(_KNOWN), key=str)]
    provider, settings = _section(config, "vector_store")
    store = _store_from(provider, settings, unused)
    _, embedder = _section(config, "embedder")
    model = str(embedder.get("model") or "")
    encoder = "e5" if "e5" in model.lower() else "minilm"
    if model and encoder == "minilm" and "minilm" not in model.lower():
        unused.append(f"embedder model {model!r} (memlm embeds with MiniLM or e5)")
    own = config.get("memlm") or {}
    if not isinstance(own, dict) or set(own) - {"store", "encoder", "bank"}:
        raise ConfigError("mem0 config: 'memlm' takes a dict with 'store', 'encoder' and 'bank'")
    bank = own.get("bank") or {}
    if not isinstance(bank, dict):
        raise ConfigError("mem0 config: memlm['bank'] must be a dict of FactBankConfig fields")
    try:
        bank_config = FactBankConfig(**bank)
    except TypeError as error:
        raise ConfigError(f"mem0 config: memlm['bank']: {error}") from None
    if unused:
        warnings.warn("memlm does not use these parts of the mem0 config: " + "; ".join(unused) +
                      " (facts are extracted by rules, with no LLM; see docs/bank.md)", Mem0ConfigWarning, stacklevel=3)
    settings_out: dict[str, Any] = {"config": bank_config, "encoder": own.get("encoder", encoder)}
    location = own.get("store", store)
    if location is not ...:
        settings_out["path"] = location
    return settings_out
