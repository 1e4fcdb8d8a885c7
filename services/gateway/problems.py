"""Every error leaves the gateway as application/problem+json with a type from the closed set."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import MmragError, ProblemType, problem

log = logging.getLogger(__name__)
PROBLEM_MEDIA_TYPE = "application/problem+json"

_STATUS_TYPES = {
    400: ProblemType.INVALID_REQUEST,
    401: ProblemType.UNAUTHORIZED,
    404: ProblemType.NOT_FOUND,
    405: ProblemType.INVALID_REQUEST,
    413: ProblemType.PAYLOAD_TOO_LARGE,
    415: ProblemType.INVALID_REQUEST,
    422: ProblemType.INVALID_REQUEST,
    429: ProblemType.RATE_LIMITED,
    503: ProblemType.UNAVAILABLE,
}


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(MmragError)
    async def _mmrag_error(request: Request, error: MmragError) -> JSONResponse:
        return problem_response(error.to_problem(instance=request.url.path))

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
            )
        )


def install_dependency_handlers(app: FastAPI) -> None:
    """Redis or the broker being down is a 503 the client can retry, not a 500."""
    import redis
    from kombu.exceptions import OperationalError

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def _unavailable(request: Request, error: Exception) -> JSONResponse:
        log.warning("dependency unavailable on %s %s: %s", request.method, request.url.path, error)
        return problem_response(
            problem(ProblemType.UNAVAILABLE, f"Redis is unavailable: {error}", instance=request.url.path),
            headers={"Retry-After": "5"},
        )
