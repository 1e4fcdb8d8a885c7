"""A request id for every HTTP request: the client's `X-Request-Id` when it is sane, else a new one.

It is answered in the `X-Request-Id` header, put in the log context of everything the request logs, and stored in
the record of any job the request creates (job_store.new_record), so the workers' log lines about that job carry
it too (task_logging.py).
"""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.logs import request_id_var

HEADER = b"x-request-id"
# A client's id is kept only if it cannot inject anything into a log line or a header.
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(HEADER)
        request_id = given.decode() if given and _SANE.fullmatch(given) else secrets.token_hex(8)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER, request_id.encode())]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
