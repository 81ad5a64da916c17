"""The memory API: a user's facts, mem0-style (add, search, list, get, update, delete, delete all,
history), with `user_id`, `agent_id`, `run_id`, `metadata` and `filters`.

Every route acts for one user: the key's own, or the `user_id` an admin key names. An id that belongs
to someone else answers 404 exactly like an id that does not exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from memlm.server.auth import act_as, principal
from memlm.server.errors import ERROR_RESPONSES, NotFound
from memlm.server.facts import FactsAdapter
from memlm.server.keys import Principal

router = APIRouter(prefix="/v1/memories", tags=["Memories (facts)"], responses=ERROR_RESPONSES)

MAX_ID = 2**63 - 1
NameField = Field(None, min_length=1, max_length=128, description="letters, digits, '.', '_', '-', '@', '+'")


class Message(BaseModel):
    role: str = Field("user", max_length=32)
    content: str


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # mem0 clients send fields memlm has no use for

    messages: str | list[Message] = Field(description="a text, or chat messages (facts come from user messages)")
    user_id: str | None = NameField
    agent_id: str | None = NameField
    run_id: str | None = NameField
    metadata: dict[str, Any] | None = None
    infer: bool = Field(True, description="extract facts (rules); false: store each text as it is")
    category: str | None = Field(None, min_length=1, max_length=64)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # mem0 clients send fields memlm has no use for

    query: str
    user_id: str | None = NameField
    agent_id: str | None = NameField
    run_id: str | None = NameField
    filters: dict[str, Any] | None = None
    limit: int | None = Field(None, ge=1, le=100)
    top_k: int | None = Field(None, ge=1, le=100, description="same as limit (mem0's name)")
    threshold: float | None = Field(None, ge=-1, le=1, description="lowest cosine similarity returned")


class ListRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # mem0 clients send fields memlm has no use for

    user_id: str | None = NameField
    agent_id: str | None = NameField
    run_id: str | None = NameField
    filters: dict[str, Any] | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000_000)


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # mem0 clients send fields memlm has no use for

    text: str | None = Field(None, description="the new text of the memory")
    metadata: dict[str, Any] | None = None


class MemoryItem(BaseModel):
    id: int
    memory: str
    user_id: str
    agent_id: str | None = None
    run_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    category: str | None = None
    importance: float | None = None
    use_count: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
    source: str | None = None
    score: float | None = None
    similarity: float | None = None


class AddResult(BaseModel):
    id: int | None
    memory: str | None
    event: str = Field(description="ADD (stored), UPDATE (stored, replacing an older memory) or NONE (not stored)")
    reason: str
    user_id: str
    agent_id: str | None = None
    run_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddResponse(BaseModel):
    results: list[AddResult]


class MemoryList(BaseModel):
    results: list[MemoryItem]
    total: int | None = Field(None, description="how many memories the listing's scope holds in all")


class Change(BaseModel):
    """One change of a memory, in mem0's history shape plus memlm's `reason` and `actor`."""

    id: int
    memory_id: int
    old_memory: str | None
    new_memory: str | None
    event: str = Field(description="ADD, UPDATE, SUPERSEDE or DELETE")
    created_at: str | None
    updated_at: str | None
    is_deleted: bool
    actor_id: str | None = None
    role: str | None = None
    reason: str | None = None
    actor: str | None = None
    time: float


class HistoryResponse(BaseModel):
    results: list[Change]


class DeleteResponse(BaseModel):
    deleted: int
    message: str


def facts(request: Request) -> FactsAdapter:
    return request.app.state.facts


@router.post("", response_model=AddResponse, summary="Add memories (facts extracted from messages)")
def add_memories(body: AddRequest, request: Request, who: Principal = Depends(principal)) -> AddResponse:
    user = act_as(who, body.user_id)
    messages = body.messages if isinstance(body.messages, str) else [m.model_dump() for m in body.messages]
    results = facts(request).add(user, messages, agent_id=body.agent_id, run_id=body.run_id,
                                 metadata=body.metadata, infer=body.infer, category=body.category)
    return AddResponse(results=[AddResult(**r) for r in results])


@router.get("", response_model=MemoryList, summary="List a user's memories")
def list_memories(request: Request, who: Principal = Depends(principal),
                  user_id: str | None = Query(None, min_length=1, max_length=128),
                  agent_id: str | None = Query(None, min_length=1, max_length=128),
                  run_id: str | None = Query(None, min_length=1, max_length=128),
                  limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10_000_000),
                  order: str = Query("recent", pattern="^(recent|id|importance)$")) -> MemoryList:
    user = act_as(who, user_id)
    adapter = facts(request)
    items = adapter.get_all(user, limit=limit, offset=offset, agent_id=agent_id, run_id=run_id, order=order)
    total = adapter.count(user, agent_id=agent_id, run_id=run_id)
    return MemoryList(results=[MemoryItem(**item) for item in items], total=total)


@router.post("/list", response_model=MemoryList, summary="List a user's memories with filters")
def filter_memories(body: ListRequest, request: Request, who: Principal = Depends(principal)) -> MemoryList:
    user = act_as(who, body.user_id)
    adapter = facts(request)
    items = adapter.get_all(user, limit=body.limit, offset=body.offset, agent_id=body.agent_id,
                            run_id=body.run_id, filters=body.filters)
    total = adapter.count(user, agent_id=body.agent_id, run_id=body.run_id, filters=body.filters)
    return MemoryList(results=[MemoryItem(**item) for item in items], total=total)


@router.post("/search", response_model=MemoryList, summary="Search a user's memories")
def search_memories(body: SearchRequest, request: Request, who: Principal = Depends(principal)) -> MemoryList:
    requested = body.user_id
    if requested is None and isinstance(body.filters, dict) and isinstance(body.filters.get("user_id"), str):
        requested = body.filters["user_id"]  # mem0 v2 names the user inside filters
    user = act_as(who, requested)
    limit = body.limit or body.top_k or 20  # mem0's default top_k
    items = facts(request).search(user, body.query, limit=limit, agent_id=body.agent_id, run_id=body.run_id,
                                  filters=body.filters, threshold=body.threshold)
    return MemoryList(results=[MemoryItem(**item) for item in items])


@router.delete("", response_model=DeleteResponse, summary="Delete all of a user's memories (or those matching)")
def delete_all_memories(request: Request, who: Principal = Depends(principal),
                        user_id: str | None = Query(None, min_length=1, max_length=128),
                        agent_id: str | None = Query(None, min_length=1, max_length=128),
                        run_id: str | None = Query(None, min_length=1, max_length=128)) -> DeleteResponse:
    user = act_as(who, user_id)
    deleted = facts(request).delete_all(user, agent_id=agent_id, run_id=run_id)
    return DeleteResponse(deleted=deleted, message=f"deleted {deleted} memories")


@router.get("/{memory_id}", response_model=MemoryItem, summary="Get one memory")
def get_memory(memory_id: int, request: Request, who: Principal = Depends(principal),
               user_id: str | None = Query(None, min_length=1, max_length=128)) -> MemoryItem:
    user = act_as(who, user_id)
    return MemoryItem(**facts(request).get(user, _check_id(memory_id)))


@router.put("/{memory_id}", response_model=MemoryItem, summary="Update a memory's text or metadata")
def update_memory(memory_id: int, body: UpdateRequest, request: Request, who: Principal = Depends(principal),
                  user_id: str | None = Query(None, min_length=1, max_length=128)) -> MemoryItem:
    user = act_as(who, user_id)
    return MemoryItem(**facts(request).update(user, _check_id(memory_id), body.text, body.metadata))


@router.delete("/{memory_id}", response_model=DeleteResponse, summary="Delete one memory")
def delete_memory(memory_id: int, request: Request, who: Principal = Depends(principal),
                  user_id: str | None = Query(None, min_length=1, max_length=128)) -> DeleteResponse:
    user = act_as(who, user_id)
    facts(request).delete(user, _check_id(memory_id))
    return DeleteResponse(deleted=1, message=f"memory {memory_id} deleted")


@router.get("/{memory_id}/history", response_model=HistoryResponse, summary="Every change of a memory")
def memory_history(memory_id: int, request: Request, who: Principal = Depends(principal),
                   user_id: str | None = Query(None, min_length=1, max_length=128)) -> HistoryResponse:
    user = act_as(who, user_id)
    return HistoryResponse(results=[Change(**c) for c in facts(request).history(user, _check_id(memory_id))])


def _check_id(memory_id: int) -> int:
    if not 0 < memory_id <= MAX_ID:
        raise NotFound(f"no memory with id {memory_id}", "memory_id")
    return memory_id
