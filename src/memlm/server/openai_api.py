"""OpenAI-compatible chat: `POST /v1/chat/completions` (plain and streamed) and `GET /v1/models`.

Requests and responses follow OpenAI's schema, so the official clients work unchanged; decoding
options map onto transformers' `generate`:

| OpenAI | transformers |
|---|---|
| `max_completion_tokens` / `max_tokens` | `max_new_tokens` |
| `temperature` (0 or unset: greedy, the server default) | `do_sample=True`, `temperature` |
| `top_p`; extensions `top_k`, `repetition_penalty` | the same names |
| `presence_penalty`, `frequency_penalty` | a logits processor applying OpenAI's formula |
| `logit_bias` | a logits processor adding the biases |
| `stop` (up to 4 strings) | `stop_strings`; the stop text is cut from the reply |
| `seed` | `torch.manual_seed` before generating |

The memories' owner is the key's user, or the request's `user` for an admin key. Each response
carries a `memlm` object (an extension; clients keep unknown fields): the memories used for the answer,
those learned from the turn, and timings. A stream sends it in its first chunk (memories used) and its
last content chunk (learned, timings).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from memlm.errors import MemlmError
from memlm.server.auth import act_as, principal
from memlm.server.engine import ChatJob, Engine
from memlm.server.errors import ERROR_RESPONSES, ApiError, logger, status_of
from memlm.server.keys import Principal

router = APIRouter(tags=["OpenAI-compatible chat"], responses=ERROR_RESPONSES)

MAX_MESSAGES = 256
MAX_MESSAGE_CHARS = 100_000


class TextPart(BaseModel):
    type: str = Field(description="only 'text' parts are supported")
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ApiError(400, f"message content of type {part.type!r} is not supported (text only)",
                               "unsupported_content", "messages")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class MemlmOptions(BaseModel):
    """memlm's own request options (an extension of the OpenAI schema)."""

    learn: bool = Field(True, description="learn from this turn (facts stated, memory state)")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields memlm has no use for

    model: str | None = Field(None, description="a model id from GET /v1/models (default: every memory)")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=100_000, description="extension: sample among the k likeliest")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="extension: transformers' penalty")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=128)
    user: str | None = Field(None, description="the end user whose memories to use (admin keys; others: own)")
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    memlm: MemlmOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 256 characters")
        return stops


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MemoryUsed(BaseModel):
    id: int
    memory: str
    category: str | None = None
    score: float
    similarity: float


class MemoryLearned(BaseModel):
    id: int | None
    memory: str | None
    event: str
    reason: str


class MemlmInfo(BaseModel):
    user: str
    memories: list[MemoryUsed] = Field(description="memories put into the prompt for this answer")
    learned: list[MemoryLearned] = Field(default_factory=list, description="facts learned from the turn")
    timings: dict[str, float] = Field(default_factory=dict, description="milliseconds")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    memlm: MemlmInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "memlm"
    memories: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _engine(request: Request) -> Engine:
    return request.app.state.engine


@router.get("/v1/models", response_model=ModelList, summary="Models: the backbone with each combination of memories")
def list_models(request: Request, _: Principal = Depends(principal)) -> ModelList:
    engine = _engine(request)
    created = request.app.state.started
    return ModelList(data=[ModelCard(id=model, created=created, memories=list(engine.resolve_model(model)))
                           for model in engine.model_ids()])


@router.get("/v1/models/{model_id}", response_model=ModelCard, summary="One model")
def get_model(model_id: str, request: Request, _: Principal = Depends(principal)) -> ModelCard:
    engine = _engine(request)
    return ModelCard(id=model_id, created=request.app.state.started, memories=list(engine.resolve_model(model_id)))


def build_job(body: ChatCompletionRequest, engine: Engine, user: str, limit: int) -> ChatJob:
    """Check a request and turn it into a `ChatJob` (400 for what memlm cannot do)."""
    if body.n not in (None, 1):
        raise ApiError(400, "n must be 1: one choice per request", "unsupported_value", "n")
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", "unsupported_value", "logprobs")
    if body.tools:
        raise ApiError(400, "tools (function calling) are not supported", "unsupported_value", "tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise ApiError(400, "only response_format {'type': 'text'} is supported", "unsupported_value",
                       "response_format")
    memories = engine.resolve_model(body.model)
    messages = []
    for index, message in enumerate(body.messages):
        text = message.text()
        if len(text) > MAX_MESSAGE_CHARS:
            raise ApiError(400, f"messages[{index}] is too long ({len(text):,} characters; limit "
                                f"{MAX_MESSAGE_CHARS:,})", "too_long", "messages")
        role = {"developer": "system", "tool": "user"}.get(message.role, message.role)
        messages.append({"role": role, "content": text})
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ApiError(400, "messages need at least one non-empty user message", "invalid_value", "messages")
    max_new = body.max_completion_tokens or body.max_tokens or engine.default_generation["max_new_tokens"]
    if max_new > limit:
        raise ApiError(400, f"max_tokens {max_new} is above this server's limit of {limit}", "invalid_value",
                       "max_tokens")
    generation = dict(engine.default_generation, max_new_tokens=int(max_new))
    temperature = body.temperature if body.temperature is not None else generation.pop("temperature", None)
    if temperature:
        generation.update(do_sample=True, temperature=float(temperature))
    else:
        generation["do_sample"] = False
        generation.pop("temperature", None)
    for name in ("top_p", "top_k", "repetition_penalty"):
        value = getattr(body, name)
        if value is not None:
            generation[name] = value
    if not generation["do_sample"]:
        generation.pop("top_p", None)
        generation.pop("top_k", None)
    bias = {}
    vocab = len(engine.tokenizer)
    for token, value in (body.logit_bias or {}).items():
        if not token.isdigit() or int(token) >= vocab:
            raise ApiError(400, f"logit_bias key {token!r} is not a token id of this model (0..{vocab - 1})",
                           "invalid_value", "logit_bias")
        if not -100 <= value <= 100:
            raise ApiError(400, "logit_bias values must be in -100..100", "invalid_value", "logit_bias")
        bias[int(token)] = float(value)
    return ChatJob(user=user, messages=messages, memories=memories, generation=generation, seed=body.seed,
                   stop=body.stop or [], presence_penalty=body.presence_penalty or 0.0,
                   frequency_penalty=body.frequency_penalty or 0.0, logit_bias=bias,
                   learn=body.memlm.learn if body.memlm is not None else True)


def _error_from(error: BaseException) -> ApiError:
    """What a failed chat job answers: memlm's typed errors keep their 4xx, anything else is a 500."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, MemlmError):
        status, code = status_of(error)
        return ApiError(status, str(error), code)
    logger.error("chat job failed", exc_info=error)
    return ApiError(500, f"generation failed ({type(error).__name__})", "server_error")


async def start_chat(engine: Engine, job: ChatJob) -> tuple[asyncio.Queue, dict[str, Any]]:
    """Queue a chat job; returns its event queue and the "start" event (errors before it are raised)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    job.emit = lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)
    engine.submit_chat(job)
    try:
        kind, value = await queue.get()
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    if kind == "error":
        raise _error_from(value)
    return queue, value


async def collect(engine: Engine, job: ChatJob) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Run a chat job to its end: (start info, reply, end info)."""
    queue, started = await start_chat(engine, job)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return started, value["reply"], value
            if kind == "error":
                raise _error_from(value)
    except asyncio.CancelledError:
        job.cancelled.set()
        raise


@router.post("/v1/chat/completions", response_model=ChatCompletion, summary="Chat with memory (OpenAI schema)",
             responses={200: {"content": {"text/event-stream": {"schema": {
                 # One server-sent event (what SSE-aware clients and schemathesis parse each event into).
                 "type": "object", "required": ["data"],
                 "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
                                "retry": {"type": "integer"}},
                 "description": "with stream=true: chat.completion.chunk events (JSON in `data`), then "
                                "`data: [DONE]`"}}}}})
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           who: Principal = Depends(principal)) -> Any:
    engine = _engine(request)
    user = act_as(who, body.user, "user")
    job = build_job(body, engine, user, request.app.state.settings.max_tokens_limit)
    model = engine.model_id(job.memories)
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    if not body.stream:
        started, reply, end = await collect(engine, job)
        completion = ChatCompletion(
            id=completion_id, created=created, model=model,
            choices=[Choice(index=0, message=ResponseMessage(content=reply), finish_reason=end["finish_reason"])],
            usage=Usage(**end["usage"]),
            memlm=MemlmInfo(user=user, memories=started["memories"], learned=end["learned"], timings=end["timings"]))
        return JSONResponse(completion.model_dump())
    queue, started = await start_chat(engine, job)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None) -> str:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if extra:
            payload.update(extra)
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""}, extra={"memlm": {"user": user,
                                                                               "memories": started["memories"]}})
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    yield chunk({"content": value})
                elif kind == "end":
                    yield chunk({}, value["finish_reason"], {"memlm": {"user": user, "memories": started["memories"],
                                                                        "learned": value["learned"],
                                                                        "timings": value["timings"]}})
                    if include_usage:
                        usage = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "choices": [], "usage": value["usage"]}
                        yield f"data: {json.dumps(usage)}\n\n"
                    break
                elif kind == "error":
                    error = _error_from(value)
                    body_ = {"error": {"message": error.message, "type": "server_error", "code": error.code}}
                    yield f"data: {json.dumps(body_)}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # the client left (or the stream ended): stop generating

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
