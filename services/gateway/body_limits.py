"""A size limit on every request body, enforced while it is received (never after reading it whole).

The limit depends on the route, and is derived from the settings that bound what the route accepts:
- an index upload (`POST /v1/collections/{name}/images`, multipart): MMRAG_MAX_INDEX_FILES files of
  MMRAG_MAX_UPLOAD_MB each, plus the metadata part (MMRAG_MAX_METADATA_MB) and the multipart framing; as JSON (a
  list of URLs with their metadata): the metadata plus a few KiB per item;
- a search (`POST /v1/searches`): one image of MMRAG_MAX_UPLOAD_MB, base64-encoded (4/3 of it) in the JSON form,
  plus room for the other fields;
- every other route: a small JSON body (JSON_BODY_LIMIT).

A Content-Length above the limit is answered 413 before a byte of the body is read. A body sent without one
(chunked) is counted as it arrives, and the first chunk past the limit ends the request with the same 413: the
route reading it gets BodyTooLarge (an HTTP 413 exception, which the problem handlers answer), and a body is never
held whole before its size is known.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import InvalidRequest, PayloadTooLarge
from services.common.settings import Settings
from services.gateway.problems import problem_response

# Bodies of the JSON routes (key creation; anything not listed below): a key's name, scopes, rate and a list of
# collections fit many times over.
JSON_BODY_LIMIT = 64 * 1024
# Beside the image of a search: instruction, filter, other fields and the multipart framing.
SEARCH_SLACK = 1024 * 1024
# Per file of an upload: its multipart headers (filename, content type); and once per request.
PART_SLACK = 1024
UPLOAD_SLACK = 1024 * 1024
# Per item of a JSON upload (a list of URLs): the URL and the JSON around it, its metadata counted apart.
URL_ITEM_SLACK = 4 * 1024
_UPLOAD_PATH = re.compile(r"/v1/collections/[^/]+/images")


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    # What the client should know about the limit: the settings it comes from, what to do instead.
    explanation: str


def body_limit(settings: Settings, method: str, path: str, content_type: str) -> BodyLimit:
    """The most bytes a request to this route may send as its body."""
    media_type = content_type.split(";")[0].strip().lower()
    if method == "POST" and _UPLOAD_PATH.fullmatch(path):
        if media_type == "application/json":
            max_bytes = settings.max_metadata_total_bytes + settings.max_index_files * URL_ITEM_SLACK + UPLOAD_SLACK
            return BodyLimit(max_bytes, "MMRAG_MAX_INDEX_FILES items and MMRAG_MAX_METADATA_MB of metadata")
        max_bytes = (
            settings.max_index_files * (settings.max_upload_bytes + PART_SLACK)
            + settings.max_metadata_total_bytes
            + UPLOAD_SLACK
        )
        return BodyLimit(
            max_bytes,
            "MMRAG_MAX_INDEX_FILES files of at most MMRAG_MAX_UPLOAD_MB, and MMRAG_MAX_METADATA_MB of metadata: "
            "send the images in several requests",
        )
    if method == "POST" and path == "/v1/searches":
        max_bytes = math.ceil(settings.max_upload_bytes * 4 / 3) + SEARCH_SLACK
        return BodyLimit(max_bytes, "one image of at most MMRAG_MAX_UPLOAD_MB (base64 included) and small fields")
    return BodyLimit(JSON_BODY_LIMIT, "a small JSON body")


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once a body passes its limit: an HTTP 413 for whichever route was reading it."""

    def __init__(self, limit: BodyLimit) -> None:
        super().__init__(status_code=413, detail=too_large_detail(limit))


def too_large_detail(limit: BodyLimit) -> str:
    return f"the request body is larger than the {limit.max_bytes:,} bytes this route accepts ({limit.explanation})"


class BodyLimits:
    """ASGI middleware: every HTTP request body stays within `body_limit` for its route."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = body_limit(self.settings, scope["method"], scope["path"], headers.get("content-type", ""))
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                error = InvalidRequest("Content-Length must be a number of bytes")
                await problem_response(error.to_problem(instance=scope["path"]))(scope, receive, send)
                return
            if int(declared) > limit.max_bytes:
                await _refuse(scope, receive, send, limit)
                return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            # The routes' problem handlers answer it; this is for a reader outside them (a middleware).
            if started:
                raise
            await _refuse(scope, receive, send, limit)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: BodyLimit) -> None:
    error = PayloadTooLarge(too_large_detail(limit))
    # The rest of the body is not read: the connection cannot carry another request after it.
    response = problem_response(error.to_problem(instance=scope["path"]), headers={"Connection": "close"})
    await response(scope, receive, send)


def install_body_limits(app: FastAPI, settings: Settings) -> None:
    # Installed before the metrics and request-id middlewares, so that they wrap it: a refused body is counted and
    # carries its X-Request-Id like any other answer.
    app.add_middleware(BodyLimits, settings=settings)
