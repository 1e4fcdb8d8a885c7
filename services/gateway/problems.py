"""Every error leaves the gateway as application/problem+json with a type from the closed set."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import MmragError, ProblemType, Unauthorized, problem
from services.gateway.http_headers import SECURITY_HEADERS

log = logging.getLogger(__name__)
PROBLEM_MEDIA_TYPE = "application/problem+json"

_STATUS_TYPES = {
    400: ProblemType.INVALID_REQUEST,
    401: ProblemType.UNAUTHORIZED,
    403: ProblemType.FORBIDDEN,
    404: ProblemType.NOT_FOUND,
    405: ProblemType.INVALID_REQUEST,
    409: ProblemType.CONFLICT,
    413: ProblemType.PAYLOAD_TOO_LARGE,
    415: ProblemType.INVALID_REQUEST,
    422: ProblemType.INVALID_REQUEST,
    429: ProblemType.RATE_LIMITED,
    503: ProblemType.UNAVAILABLE,
}


# What a client must send to be let in (RFC 6750): every 401 says it.
WWW_AUTHENTICATE = 'Bearer realm="mmrag"'


class ProblemDetails(BaseModel):
    """An RFC 9457 problem: every error answer's body, and a failed job's `error`.

    `type` is one of a closed set and `status` repeats the HTTP status. Some problems add members: `errors` (one per
    invalid field), `missing` and `broken` (/readyz).
    """

    model_config = ConfigDict(extra="allow")

    type: ProblemType
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(default=None, description="one entry per invalid field")


PROBLEM_SCHEMA_NAME = "ProblemDetails"


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an answer with a problem body (the schema is added by app.py)."""
    schema = {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA_NAME}"}
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def error_headers(error: MmragError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return headers


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(MmragError)
    async def _mmrag_error(request: Request, error: MmragError) -> JSONResponse:
        return problem_response(error.to_problem(instance=request.url.path), headers=error_headers(error))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(part) for part in item["loc"]), "message": item["msg"]} for item in error.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(problem(ProblemType.INVALID_REQUEST, detail, instance=request.url.path, errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        problem_type = _STATUS_TYPES.get(error.status_code, ProblemType.INTERNAL)
        body = problem(problem_type, str(error.detail), instance=request.url.path)
        body["status"] = error.status_code
        return problem_response(body, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            problem(
                ProblemType.INTERNAL,
                "an internal error occurred; it has been logged",
                instance=request.url.path,
            ),
            # Starlette answers this one outside the middleware stack: the headers are set here.
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
        )


def install_dependency_handlers(app: FastAPI) -> None:
    """Redis or the broker being down is a 503 the client can retry, not a 500."""
    import redis
    from kombu.exceptions import OperationalError

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def _unavailable(request: Request, error: Exception) -> JSONResponse:
        # The error's text (host, port, the client library's words) goes to the log only.
        log.warning("dependency unavailable on %s %s: %s", request.method, request.url.path, error)
        return problem_response(
            problem(ProblemType.UNAVAILABLE, "Redis is unavailable: retry shortly", instance=request.url.path),
            headers={"Retry-After": "5"},
        )
