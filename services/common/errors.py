"""The closed set of problem types (RFC 9457), shared by HTTP responses and failed jobs."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ProblemType(StrEnum):
    INVALID_REQUEST = "invalid-request"
    INVALID_IMAGE = "invalid-image"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    NOT_FOUND = "not-found"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    # The request clashes with what the service already holds: an Idempotency-Key used for another request, or a
    # new collection past MMRAG_MAX_COLLECTIONS.
    CONFLICT = "conflict"
    RATE_LIMITED = "rate-limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# One HTTP status per problem type, so a client can branch on either.
PROBLEM_STATUS: dict[ProblemType, int] = {
    ProblemType.INVALID_REQUEST: 400,
    ProblemType.INVALID_IMAGE: 422,
    ProblemType.PAYLOAD_TOO_LARGE: 413,
    ProblemType.NOT_FOUND: 404,
    ProblemType.UNAUTHORIZED: 401,
    ProblemType.FORBIDDEN: 403,
    ProblemType.CONFLICT: 409,
    ProblemType.RATE_LIMITED: 429,
    ProblemType.UNAVAILABLE: 503,
    ProblemType.INTERNAL: 500,
}

PROBLEM_TITLE: dict[ProblemType, str] = {
    ProblemType.INVALID_REQUEST: "The request is not valid",
    ProblemType.INVALID_IMAGE: "The image cannot be used",
    ProblemType.PAYLOAD_TOO_LARGE: "The upload is too large",
    ProblemType.NOT_FOUND: "Not found",
    ProblemType.UNAUTHORIZED: "Not authorised",
    ProblemType.FORBIDDEN: "Not allowed for this API key",
    ProblemType.CONFLICT: "The request conflicts with the service's state",
    ProblemType.RATE_LIMITED: "Too many requests",
    ProblemType.UNAVAILABLE: "A dependency is unavailable",
    ProblemType.INTERNAL: "Internal error",
}


class MmragError(Exception):
    """An error that becomes a problem+json body on the wire or the `error` of a failed job."""

    problem_type: ProblemType = ProblemType.INTERNAL

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        # When the client may try again (429, 503): the gateway sends it as Retry-After.
        self.retry_after_s = retry_after_s

    @property
    def status(self) -> int:
        return PROBLEM_STATUS[self.problem_type]

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        return problem(self.problem_type, self.detail, instance=instance, **self.extra)


class InvalidRequest(MmragError):
    problem_type = ProblemType.INVALID_REQUEST


class InvalidImage(MmragError):
    problem_type = ProblemType.INVALID_IMAGE


class PayloadTooLarge(MmragError):
    problem_type = ProblemType.PAYLOAD_TOO_LARGE


class NotFound(MmragError):
    problem_type = ProblemType.NOT_FOUND


class Unauthorized(MmragError):
    problem_type = ProblemType.UNAUTHORIZED


class Forbidden(MmragError):
    problem_type = ProblemType.FORBIDDEN


class Conflict(MmragError):
    problem_type = ProblemType.CONFLICT


class RateLimited(MmragError):
    problem_type = ProblemType.RATE_LIMITED


class Unavailable(MmragError):
    problem_type = ProblemType.UNAVAILABLE


class InternalError(MmragError):
    problem_type = ProblemType.INTERNAL


def problem(problem_type: ProblemType, detail: str, *, instance: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type.value,
        "title": PROBLEM_TITLE[problem_type],
        "status": PROBLEM_STATUS[problem_type],
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return body
