"""`memory_settings`: what a mem0 configuration dict amounts to in memlm, exactly: the store location it
names, the encoder, memlm's own settings, the one warning naming every unused part, typed errors."""

from __future__ import annotations

import warnings

import pytest

from memlm.errors import ConfigError
from memlm.facts.bank import FactBankConfig
from memlm.facts.mem0_config import Mem0ConfigWarning, memory_settings

WARNING_START = "memlm does not use these parts of the mem0 config: "
WARNING_END = " (facts are extracted by rules, with no LLM; see docs/bank.md)"


def settings_and_warning(config: dict) -> tuple[dict, str | None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = memory_settings(config)
    messages = [str(w.message) for w in caught if issubclass(w.category, Mem0ConfigWarning)]
    assert len(messages) <= 1  # one warning naming everything, or none
    return settings, messages[0] if messages else None


@pytest.mark.parametrize("settings, store", [
    ({"connection_string": "postgresql://a:b@db:6000/facts", "dbname": "ignored"}, "postgresql://a:b@db:6000/facts"),
    ({"dbname": "facts", "user": "ada", "password": "p@ss word", "host": "db", "port": 6000},
     "postgresql://ada:p%40ss%20word@db:6000/facts"),
    ({"dbname": "facts"}, "postgresql://@localhost:5432/facts"),  # mem0's defaults, no user or password
    ({"dbname": "facts", "user": "ada", "password": ""}, "postgresql://ada@localhost:5432/facts"),
])
@pytest.mark.parametrize("provider", ["pgvector", "postgres", "postgresql"])
def test_a_postgres_vector_store_becomes_a_connection_url(provider, settings, store):
    got, warning = settings_and_warning({"vector_store": {"provider": provider, "config": settings}})
    assert got["path"] == store and warning is None


@pytest.mark.parametrize("path, store", [
    ("/data/mem0", "/data/mem0/memlm-facts.sqlite"), ("/data/facts.sqlite", "/data/facts.sqlite"),
    ("/data/facts.db", "/data/facts.db"), ("/data/facts.sqlite3", "/data/facts.sqlite3"),
    ("/data/facts.json", "/data/facts.json/memlm-facts.sqlite"),
])
def test_a_vector_store_path_becomes_an_sqlite_store_there(path, store):
    got, warning = settings_and_warning({"vector_store": {"provider": "faiss", "config": {"path": path}}})
    assert got["path"] == store and warning is None
    # a pgvector section without a database falls back to its path too
    assert memory_settings({"vector_store": {"provider": "pgvector", "config": {"path": path}}})["path"] == store


def test_a_vector_store_service_is_named_unused_and_the_default_store_kept():
    got, warning = settings_and_warning({"vector_store": {"provider": "qdrant", "config": {"host": "q", "path": ""}}})
    assert "path" not in got
    assert warning == WARNING_START + "vector_store 'qdrant' (memlm uses its own store)" + WARNING_END
    for section in ({"config": {"host": "q"}}, {"provider": 5, "config": {}}):  # no provider's name: none to give
        got, warning = settings_and_warning({"vector_store": section})
        assert "path" not in got and warning is None


@pytest.mark.parametrize("model, encoder, named", [
    ("intfloat/multilingual-e5-small", "e5", False), ("E5-large", "e5", False),
    ("sentence-transformers/all-MiniLM-L6-v2", "minilm", False), ("text-embedding-3-small", "minilm", True),
    ("", "minilm", False),
])
def test_the_embedder_model_chooses_e5_or_minilm_and_others_are_named(model, encoder, named):
    got, warning = settings_and_warning({"embedder": {"provider": "x", "config": {"model": model}}})
    assert got["encoder"] == encoder
    expected = WARNING_START + f"embedder model {model!r} (memlm embeds with MiniLM or e5)" + WARNING_END
    assert warning == (expected if named else None)


def test_every_unused_part_is_named_once_in_order():
    config = {"llm": {"provider": "openai"}, "version": "v1.1", "graph_store": {}, "history_db_path": "",
              "zeta": 1, 3: "x", "vector_store": {"provider": "chroma", "config": {}}}
    got, warning = settings_and_warning(config)
    assert warning == (WARNING_START + "llm; version; unknown key 3; unknown key 'zeta'; vector_store 'chroma' "
                       "(memlm uses its own store)" + WARNING_END)  # empty sections are not named
    assert got == {"config": FactBankConfig(), "encoder": "minilm"}


def test_memlms_own_settings_win():
    got, warning = settings_and_warning({
        "vector_store": {"provider": "faiss", "config": {"path": "/data/mem0"}},
        "embedder": {"config": {"model": "e5-base"}},
        "memlm": {"store": "/elsewhere/facts.sqlite", "encoder": "minilm", "bank": {"top_k": 3}}})
    assert got == {"config": FactBankConfig(top_k=3), "encoder": "minilm", "path": "/elsewhere/facts.sqlite"}
    assert warning is None
    assert memory_settings({"memlm": {"store": None}})["path"] is None  # memlm's own choice, even None


@pytest.mark.parametrize("config, message", [
    ([("vector_store", {})], "Memory.from_config needs a dict, got list"),
    ({"vector_store": "faiss"}, "mem0 config: 'vector_store' must be a dict with 'provider' and 'config', got 'faiss'"),
    ({"embedder": {"config": ["model"]}}, "mem0 config: embedder['config'] must be a dict"),
    ({"memlm": {"stores": "x"}}, "mem0 config: 'memlm' takes a dict with 'store', 'encoder' and 'bank'"),
    ({"memlm": "x"}, "mem0 config: 'memlm' takes a dict with 'store', 'encoder' and 'bank'"),
    ({"memlm": {"bank": [1]}}, "mem0 config: memlm['bank'] must be a dict of FactBankConfig fields"),
    ({"memlm": {"bank": {"top_kk": 1}}}, "mem0 config: memlm['bank']: "),
])
def test_sections_of_the_wrong_shape_are_config_errors_that_say_which(config, message):
    with pytest.raises(ConfigError) as error:
        memory_settings(config)
    assert str(error.value).startswith(message)


def test_each_accepted_memlm_key_is_accepted_alone():
    for key, value in (("store", "/x.sqlite"), ("encoder", "e5"), ("bank", {})):
        memory_settings({"memlm": {key: value}})
