"""Human evaluation over HTTP: two contenders answer one prompt blind, a person votes, votes add up.

* `POST /v1/eval/comparisons` — both contenders (model ids; default: the bare backbone against every
  memory, or, with the chat preset, its untrained prompt fusion — the same memories without the LoRA —
  against the preset) answer the prompt with the caller's memories, learning nothing; the answers come back as A
  and B in random order, without saying which is which.
* `POST /v1/eval/comparisons/{id}/vote` — "A", "B" or "tie"; once per comparison; the answer
  reveals the contenders.
* `GET /v1/eval/summary` — win rates with 95% intervals (`memlm.eval.human.summarise`).
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from memlm.errors import ConfigError
from memlm.eval.human import VoteStore, summarise
from memlm.server.auth import act_as, principal
from memlm.server.engine import ChatJob, Engine
from memlm.server.errors import ERROR_RESPONSES, ApiError, NotFound
from memlm.server.keys import Principal
from memlm.server.openai_api import collect

router = APIRouter(prefix="/v1/eval", tags=["Human evaluation"], responses=ERROR_RESPONSES)


class ComparisonRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=4000)
    contenders: list[str] | None = Field(None, min_length=2, max_length=2,
                                         description="two model ids (default: bare backbone vs every memory; "
                                                     "with the chat preset: its memories without the LoRA vs "
                                                     "with it)")
    max_tokens: int | None = Field(None, ge=1)
    user_id: str | None = Field(None, min_length=1, max_length=128)


class Answers(BaseModel):
    A: str
    B: str


class ComparisonOut(BaseModel):
    id: str
    prompt: str
    answers: Answers


class VoteRequest(BaseModel):
    choice: Literal["A", "B", "tie"]


class VoteOut(BaseModel):
    id: str
    choice: Literal["A", "B", "tie"]
    contenders: dict[str, str] = Field(description="which model answered A and which B")
    winner: str = Field(description="the winning model id, or 'tie'")


class ContenderRow(BaseModel):
    contender: str
    mechanism: str
    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float
    ci_low: float
    ci_high: float


class PairRow(BaseModel):
    a: str
    b: str
    n: int
    a_wins: int
    b_wins: int
    ties: int
    a_win_rate: float
    ci_low: float
    ci_high: float


class Summary(BaseModel):
    votes: int
    contenders: list[ContenderRow]
    pairs: list[PairRow]


def votes(request: Request) -> VoteStore:
    return request.app.state.votes


def default_contenders(engine: Engine) -> list[str]:
    """What a comparison pits against the server's default model when the caller names no contenders:
    with a trained LoRA (the chat preset), the same memories without it (the untrained prompt fusion);
    otherwise the bare backbone."""
    from memlm.server.engine import LORA

    if LORA in engine.memory_names and len(engine.memory_names) > 1:
        return [engine.model_id(tuple(n for n in engine.memory_names if n != LORA)), engine.default_model]
    return [engine.model_id(()), engine.default_model]


@router.post("/comparisons", response_model=ComparisonOut, summary="Two contenders answer one prompt, blind")
async def create_comparison(body: ComparisonRequest, request: Request,
                            who: Principal = Depends(principal)) -> ComparisonOut:
    engine: Engine = request.app.state.engine
    user = act_as(who, body.user_id)
    if not body.prompt.strip():
        raise ApiError(400, "the prompt is empty", "invalid_value", "prompt")
    contenders = body.contenders or default_contenders(engine)
    for contender in contenders:
        engine.resolve_model(contender)
    if contenders[0] == contenders[1]:
        raise ApiError(400, "the two contenders must differ", "invalid_value", "contenders")
    limit = request.app.state.settings.max_tokens_limit
    max_new = body.max_tokens or engine.default_generation["max_new_tokens"]
    if max_new > limit:
        raise ApiError(400, f"max_tokens {max_new} is above this server's limit of {limit}", "invalid_value",
                       "max_tokens")
    answers = []
    for contender in contenders:
        job = ChatJob(user=user, messages=[{"role": "user", "content": body.prompt}],
                      memories=engine.resolve_model(contender),
                      generation=dict(engine.default_generation, max_new_tokens=max_new), learn=False)
        _, reply, _ = await collect(engine, job)
        answers.append(reply)
    if secrets.randbelow(2):
        contenders, answers = contenders[::-1], answers[::-1]
    comparison = votes(request).add(who.user, body.prompt, contenders[0], contenders[1], answers[0], answers[1])
    return ComparisonOut(id=comparison.id, prompt=comparison.prompt, answers=Answers(A=answers[0], B=answers[1]))


@router.post("/comparisons/{comparison_id}/vote", response_model=VoteOut, summary="Vote A, B or tie (once)")
def vote(comparison_id: str, body: VoteRequest, request: Request, who: Principal = Depends(principal)) -> VoteOut:
    store = votes(request)
    try:
        comparison = store.vote(comparison_id, who.user, body.choice)
    except KeyError:
        raise NotFound(f"no comparison with id {comparison_id!r}", "comparison_id") from None
    except ConfigError as error:
        raise ApiError(409, str(error), "already_voted") from None
    return VoteOut(id=comparison.id, choice=body.choice, winner=comparison.winner or "tie",
                   contenders={"A": comparison.contender_a, "B": comparison.contender_b})


@router.get("/summary", response_model=Summary, summary="Win rates with 95% intervals over every vote")
def summary(request: Request, _: Principal = Depends(principal)) -> Any:
    return summarise(votes(request).votes())
