"""The web page (plain HTML/JS/CSS from `static/`, no build step, nothing fetched from elsewhere) and
the routes it needs beyond the API: what the server offers, who the key is, and the evaluation report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

import memlm
from memlm.eval.human import summarise
from memlm.server.auth import principal
from memlm.server.errors import ERROR_RESPONSES, NotFound
from memlm.server.keys import Principal

STATIC_DIR = Path(__file__).parent / "static"
_PLOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png")  # fullmatch

router = APIRouter(tags=["Server and web page"], responses=ERROR_RESPONSES)


class ServerInfo(BaseModel):
    name: str = "memlm"
    version: str
    auth: str = Field(description="'keys' (send a key) or 'local' (one local user, no key)")
    default_model: str
    models: list[str]
    memories: list[str]
    documents: bool = Field(description="whether documents can be memorized (a key/value memory is attached)")
    max_document_chars: int


class Me(BaseModel):
    user: str
    role: str
    auth: str


class Plot(BaseModel):
    name: str
    url: str


class Report(BaseModel):
    available: bool
    title: str | None = None
    created: str | None = None
    command: str | None = None
    plots: list[Plot] = Field(default_factory=list)
    markdown: str | None = None
    human: dict[str, Any] = Field(default_factory=dict)


@router.get("/", include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))


@router.get("/v1/server", response_model=ServerInfo, summary="What this server offers (no key needed)")
def server_info(request: Request) -> ServerInfo:
    engine = request.app.state.engine
    return ServerInfo(version=memlm.__version__, auth=request.app.state.auth.mode, default_model=engine.default_model,
                      models=engine.model_ids(), memories=list(engine.memory_names), documents=engine.has_documents,
                      max_document_chars=request.app.state.settings.max_document_chars)


@router.get("/v1/me", response_model=Me, summary="Who this key acts as")
def me(request: Request, who: Principal = Depends(principal)) -> Me:
    return Me(user=who.user, role=who.role, auth=request.app.state.auth.mode)


def _report_dir(request: Request) -> Path | None:
    directory = request.app.state.settings.report_dir
    return Path(directory) if directory is not None and Path(directory).is_dir() else None


@router.get("/v1/report", response_model=Report, summary="The evaluation report: plots, tables, human votes")
def report(request: Request, _: Principal = Depends(principal)) -> Report:
    human = summarise(request.app.state.votes.votes())
    directory = _report_dir(request)
    if directory is None:
        return Report(available=False, human=human)
    saved: dict[str, Any] = {}
    if (directory / "results.json").is_file():
        try:
            saved = json.loads((directory / "results.json").read_text(encoding="utf-8"))
        except ValueError:
            saved = {}
    markdown = (directory / "results.md").read_text(encoding="utf-8") if (directory / "results.md").is_file() else None
    plots = [Plot(name=path.name, url=f"/v1/report/files/{path.name}")
             for path in sorted(directory.glob("*.png")) if _PLOT.fullmatch(path.name)]
    return Report(available=True, title=saved.get("title"), created=saved.get("created"), command=saved.get("command"),
                  plots=plots, markdown=markdown, human=human)


@router.get("/v1/report/files/{name}", summary="One plot of the report (PNG)",
            responses={200: {"content": {"image/png": {}}}})
def report_file(name: str, request: Request, _: Principal = Depends(principal)) -> FileResponse:
    directory = _report_dir(request)
    if directory is None or not _PLOT.fullmatch(name) or not (directory / name).is_file():
        raise NotFound(f"no plot named {name!r}", "name")
    return FileResponse(directory / name, media_type="image/png")
