"""The fact store's SQLite schema (`memlm.facts.store` reads the tables it describes): the tables,
the columns added since schema 1, the indexes, the columns every read selects, and what "live" means."""

from __future__ import annotations

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (user TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS facts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    category TEXT,
    text TEXT NOT NULL,
    text_key TEXT NOT NULL,         -- hash of the normalised text: finds exact duplicates
    embedding BLOB NOT NULL,        -- float32 retrieval vector (unit norm)
    latent BLOB,                    -- float32 backbone vector for latent fusion, if computed
    importance REAL NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    use_count INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    session TEXT,
    row INTEGER,                    -- batch row it was written from (NULL: visible to every row)
    spoken TEXT,                    -- the user's own (first-person) sentence, for chat facts
    status TEXT NOT NULL DEFAULT 'active',  -- 'active' or 'superseded'
    superseded_by INTEGER,
    expires_at REAL,                -- unix time after which the fact is no longer retrieved
    updated REAL,
    metadata TEXT,                  -- JSON object
    agent_id TEXT,
    run_id TEXT,
    slot TEXT,                      -- subject and attribute head the fact fills (memlm.facts.slots), if any
    context TEXT                    -- searchable words that are not the fact: the message before a turn, who spoke
);
CREATE INDEX IF NOT EXISTS facts_user ON facts (user);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fact_id INTEGER NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,           -- 'add', 'update', 'delete'
    old_text TEXT,
    new_text TEXT,
    actor TEXT,
    time REAL NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS history_user ON history (user, id);
CREATE INDEX IF NOT EXISTS history_fact ON history (fact_id);
"""

_FACT_COLUMNS = ("id, user, category, text, importance, created, last_used, use_count, source, session, row, spoken, "
                 "status, superseded_by, expires_at, updated, metadata, agent_id, run_id, slot, context")
# Columns schema 2 added, for files written by schema 1 (added in place when such a file is opened).
_NEW_COLUMNS = {"facts": (("spoken", "TEXT"), ("status", "TEXT NOT NULL DEFAULT 'active'"),
                          ("superseded_by", "INTEGER"), ("expires_at", "REAL"), ("updated", "REAL"),
                          ("metadata", "TEXT"), ("agent_id", "TEXT"), ("run_id", "TEXT"), ("slot", "TEXT"),
                          ("context", "TEXT")),
                "history": (("reason", "TEXT"),)}
_INDEXES = """
DROP INDEX IF EXISTS facts_user_key;
-- One active copy of a text per user and row, also when two processes add it at the same moment
-- (a superseded fact may be stated again).
CREATE UNIQUE INDEX IF NOT EXISTS facts_user_key_active ON facts (user, text_key, COALESCE(row, -1))
    WHERE status = 'active';
CREATE INDEX IF NOT EXISTS facts_user_slot ON facts (user, slot) WHERE slot IS NOT NULL;
-- the newest turn of a run, which the next turn follows (`latest_in_run`, once per stored turn)
CREATE INDEX IF NOT EXISTS facts_user_run ON facts (user, run_id, id) WHERE run_id IS NOT NULL;
"""
_LIVE = "status = 'active' AND (expires_at IS NULL OR expires_at > ?)"
