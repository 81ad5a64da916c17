"""Documents: a long text memorized into a user's key/value memory (`knn`), with progress.

`POST /v1/documents` answers at once (202) with the document's id; the text is then streamed through
the model one segment per worker job (chats interleave between segments). Progress is readable with
`GET /v1/documents/{id}` and as server-sent events from `GET /v1/documents/{id}/events`. Each item
the memory stores records the document id as its session, so `DELETE` forgets exactly that document
and `GET /v1/documents/search` finds which document a stored text came from.

The server keeps a row per document (`<home>/server.sqlite`, `documents`): title, sizes, progress,
status; not the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from memlm.facts.store import CONTROL_CHARACTERS
from memlm.server.auth import act_as, principal
from memlm.server.engine import Engine
from memlm.server.errors import ERROR_RESPONSES, ApiError, NotFound
from memlm.server.keys import Principal
from memlm.store.sqlite import connect, transaction

logger = logging.getLogger("memlm.server")
router = APIRouter(prefix="/v1/documents", tags=["Documents (key/value memory)"], responses=ERROR_RESPONSES)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    title TEXT NOT NULL,
    chars INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    segments INTEGER NOT NULL,
    done INTEGER NOT NULL,
    status TEXT NOT NULL,           -- queued, running, done, failed, cancelled
    error TEXT,
    created REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS documents_user ON documents (user);
"""
_COLUMNS = "id, user, title, chars, tokens, segments, done, status, error, created, finished"
ACTIVE = ("queued", "running")


class DocumentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = Field(description="UTF-8 text to memorize")
    title: str | None = Field(None, max_length=200)
    user_id: str | None = Field(None, min_length=1, max_length=128)


class Document(BaseModel):
    id: str
    user_id: str
    title: str
    chars: int
    tokens: int
    segments: int
    done: int = Field(description="segments memorized so far")
    progress: float = Field(description="done / segments, 0..1")
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    error: str | None = None
    created: float
    finished: float | None = None
    items: int | None = Field(None, description="items the key/value memory holds for it (one layer)")


class DocumentList(BaseModel):
    results: list[Document]


class DocumentHit(BaseModel):
    document_id: str
    title: str | None
    position: int = Field(description="token position in the document")
    text: str = Field(description="the stored token")
    context: str = Field(description="the tokens just before it")


class DocumentSearch(BaseModel):
    results: list[DocumentHit]


class Deleted(BaseModel):
    deleted: int = Field(description="items removed from the key/value memory")
    message: str


class Documents:
    """Document rows plus the jobs memorizing them."""

    def __init__(self, engine: Engine, server_db: str | Path, segment_length: int = 512):
        self.engine = engine
        self.db = connect(Path(server_db), _SCHEMA, 1)
        self.segment_length = max(16, min(segment_length, engine.context_length))
        self.tasks: dict[str, asyncio.Task] = {}
        with transaction(self.db):  # jobs do not survive a restart: say so instead of "running" forever
            self.db.execute("UPDATE documents SET status = 'failed', error = 'the server stopped before it "
                            "finished' WHERE status IN ('queued', 'running')")

    def row(self, user: str, document_id: str) -> dict[str, Any]:
        found = self.db.execute(f"SELECT {_COLUMNS} FROM documents WHERE id = ? AND user = ?",
                                (document_id, user)).fetchone()
        if found is None:
            raise NotFound(f"no document with id {document_id!r}", "document_id")
        return _as_dict(found)

    def rows(self, user: str) -> list[dict[str, Any]]:
        return [_as_dict(r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM documents WHERE user = ? ORDER BY created DESC", (user,))]

    def _update(self, document_id: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with transaction(self.db):
            self.db.execute(f"UPDATE documents SET {sets} WHERE id = ?", [*values.values(), document_id])

    async def start(self, user: str, title: str | None, text: str) -> dict[str, Any]:
        self.engine.kv_memory()  # 409 before anything is stored when there is no key/value memory
        if not text.strip():
            raise ApiError(400, "the document is empty", "invalid_value", "text")
        if CONTROL_CHARACTERS.search(text):
            raise ApiError(400, "the document contains control characters (binary data?); send UTF-8 text",
                           "invalid_value", "text")
        ids = self.engine.document_tokens(text)
        segments = (len(ids) + self.segment_length - 1) // self.segment_length
        document_id = "doc-" + secrets.token_hex(8)
        title = (title or "").strip() or text.strip().splitlines()[0][:60]
        with transaction(self.db):
            self.db.execute(f"INSERT INTO documents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, 'queued', NULL, ?, NULL)",
                            (document_id, user, title, len(text), len(ids), segments, time.time()))
        self.tasks[document_id] = asyncio.create_task(self._memorize(user, document_id, ids, segments))
        return self.row(user, document_id)

    async def _memorize(self, user: str, document_id: str, ids: Any, segments: int) -> None:
        try:
            self._update(document_id, status="running")
            for index in range(segments):
                segment = ids[index * self.segment_length:(index + 1) * self.segment_length]
                await self.engine.run(self.engine.memorize_segment, user, document_id, segment, index == 0,
                                      force=True)
                self._update(document_id, done=index + 1)
            await self.engine.run(self.engine.save_state, user, force=True)
            self._update(document_id, status="done", finished=time.time())
        except asyncio.CancelledError:
            self._update(document_id, status="cancelled", finished=time.time())
            raise
        except Exception as error:  # noqa: BLE001 - the document records why it failed
            logger.exception("memorizing %s failed", document_id)
            self._update(document_id, status="failed", error=f"{type(error).__name__}: {error}"[:500],
                         finished=time.time())
        finally:
            self.tasks.pop(document_id, None)

    async def delete(self, user: str, document_id: str) -> int:
        self.row(user, document_id)  # 404 first
        task = self.tasks.get(document_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        deleted = await self.engine.run(self.engine.delete_document, user, document_id, force=True)
        with transaction(self.db):
            self.db.execute("DELETE FROM documents WHERE id = ? AND user = ?", (document_id, user))
        return deleted

    def close(self) -> None:
        self.db.close()

    async def shutdown(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _as_dict(row: tuple) -> dict[str, Any]:
    keys = [c.strip() for c in _COLUMNS.split(",")]
    values = dict(zip(keys, row, strict=True))
    values["user_id"] = values.pop("user")
    values["progress"] = values["done"] / values["segments"] if values["segments"] else 1.0
    return values


def documents(request: Request) -> Documents:
    return request.app.state.documents


@router.post("", response_model=Document, status_code=202, summary="Memorize a long text (answers at once)")
async def add_document(body: DocumentRequest, request: Request, who: Principal = Depends(principal)) -> Document:
    user = act_as(who, body.user_id)
    limit = request.app.state.settings.max_document_chars
    if len(body.text) > limit:
        raise ApiError(413, f"the document is {len(body.text):,} characters; this server takes up to {limit:,}",
                       "too_large", "text")
    return Document(**await documents(request).start(user, body.title, body.text))


@router.get("", response_model=DocumentList, summary="A user's documents")
async def list_documents(request: Request, who: Principal = Depends(principal),
                         user_id: str | None = Query(None, min_length=1, max_length=128)) -> DocumentList:
    user = act_as(who, user_id)
    return DocumentList(results=[Document(**row) for row in documents(request).rows(user)])


@router.get("/search", response_model=DocumentSearch, summary="Find stored text in a user's key/value memory")
async def search_documents(request: Request, who: Principal = Depends(principal),
                           query: str = Query(min_length=1, max_length=200),
                           limit: int = Query(20, ge=1, le=200),
                           user_id: str | None = Query(None, min_length=1, max_length=128)) -> DocumentSearch:
    user = act_as(who, user_id)
    store = documents(request)
    engine = store.engine
    engine.kv_memory()
    hits = await engine.run(engine.search_documents, user, query, limit)
    titles = {row["id"]: row["title"] for row in store.rows(user)}
    return DocumentSearch(results=[DocumentHit(**hit, title=titles.get(hit["document_id"])) for hit in hits])


@router.get("/{document_id}", response_model=Document, summary="A document and its progress")
async def get_document(document_id: str, request: Request, who: Principal = Depends(principal),
                       user_id: str | None = Query(None, min_length=1, max_length=128)) -> Document:
    user = act_as(who, user_id)
    row = documents(request).row(user, document_id)
    if row["status"] == "done":
        engine = documents(request).engine
        row["items"] = (await engine.run(engine.document_items, user)).get(document_id, 0)
    return Document(**row)


@router.get("/{document_id}/events", summary="Progress as server-sent events until the document is done",
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def document_events(document_id: str, request: Request, who: Principal = Depends(principal),
                          user_id: str | None = Query(None, min_length=1, max_length=128)) -> StreamingResponse:
    user = act_as(who, user_id)
    store = documents(request)
    store.row(user, document_id)

    async def events() -> AsyncIterator[str]:
        last = None
        while True:
            try:
                row = store.row(user, document_id)
            except NotFound:
                yield f"data: {json.dumps({'id': document_id, 'status': 'deleted'})}\n\n"
                return
            state = (row["status"], row["done"])
            if state != last:
                yield f"data: {json.dumps(row)}\n\n"
                last = state
            if row["status"] not in ACTIVE:
                return
            await asyncio.sleep(0.1)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.delete("/{document_id}", response_model=Deleted, summary="Forget a document (its items and its row)")
async def delete_document(document_id: str, request: Request, who: Principal = Depends(principal),
                          user_id: str | None = Query(None, min_length=1, max_length=128)) -> Deleted:
    user = act_as(who, user_id)
    deleted = await documents(request).delete(user, document_id)
    return Deleted(deleted=deleted, message=f"document {document_id} forgotten ({deleted} items)")
