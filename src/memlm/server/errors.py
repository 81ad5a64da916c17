"""Every error the server answers with: one JSON shape (OpenAI's), a clear message, the right 4xx.

    {"error": {"message": "no memory with id 7", "type": "not_found_error", "code": "not_found", "param": null}}

memlm's typed errors map to statuses in one table (`STATUS`); request validation errors (wrong types,
missing fields, malformed JSON) become 422 with each problem named by its location.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from memlm.errors import (
    BackboneNotFoundError,
    ConfigError,
    CorruptedFileError,
    IncompatibleMemoryError,
    MemlmError,
    MemoryStateError,
    UnknownMechanismError,
)
from memlm.facts.store import DuplicateFactError, FactNotFoundError, UnknownUserError

logger = logging.getLogger("memlm.server")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "request_too_large", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_busy"}


class ApiError(Exception):
    """An error answered as-is: status, message and a short machine-readable code."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


class NotFound(ApiError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(404, message, "not_found", param)


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """What every error response holds (the shape of OpenAI's API errors)."""

    error: ErrorBody


# memlm's typed errors -> (status, code); the first matching class wins (subclasses first).
STATUS: list[tuple[type[BaseException], int, str]] = [
    (FactNotFoundError, 404, "not_found"),
    (UnknownUserError, 404, "not_found"),
    (DuplicateFactError, 409, "duplicate"),
    (UnknownMechanismError, 404, "model_not_found"),
    (ConfigError, 400, "invalid_value"),
    (IncompatibleMemoryError, 409, "incompatible"),
    (MemoryStateError, 409, "memory_state"),
    (CorruptedFileError, 500, "corrupted_file"),
    (BackboneNotFoundError, 500, "backbone_not_found"),
    (MemlmError, 400, "memlm_error"),
]

# Every documented error response, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in (
        (400, "invalid value"), (401, "missing or invalid API key"), (404, "not found (also another user's)"),
        (409, "conflict"), (413, "request too large"), (422, "malformed request"), (503, "server busy"))
}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(error: BaseException) -> tuple[int, str]:
    for cls, status, code in STATUS:
        if isinstance(error, cls):
            return status, code
    return 500, "server_error"


def _location(parts: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in parts if p not in ("body", "query", "path")] or [str(p) for p in parts]
    return ".".join(parts)


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    problems = []
    for item in error.errors()[:5]:
        if item.get("type") == "json_invalid":
            problems.append(f"malformed JSON ({item.get('ctx', {}).get('error', 'cannot be parsed')})")
            continue
        where = _location(item.get("loc", ()))
        problems.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", "invalid"))
    first = error.errors()[0] if error.errors() else {}
    return "; ".join(problems) or "invalid request", _location(first.get("loc", ())) or None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into `ErrorResponse`."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.code, error.param, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(error)
        return error_response(422, message, "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request failed"
        return error_response(error.status_code, message, None, None, getattr(error, "headers", None))

    @app.exception_handler(MemlmError)
    async def _memlm(_: Request, error: MemlmError) -> JSONResponse:
        status, code = status_of(error)
        if status >= 500:
            logger.error("%s: %s", type(error).__name__, error)
        return error_response(status, str(error), code)

    @app.exception_handler(sqlite3.IntegrityError)
    async def _integrity(_: Request, error: sqlite3.IntegrityError) -> JSONResponse:
        return error_response(409, "conflict with stored data (e.g. an identical memory exists)", "conflict")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return error_response(500, f"internal error ({type(error).__name__})", "server_error")
