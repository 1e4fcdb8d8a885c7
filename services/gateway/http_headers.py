"""Headers every answer carries, and CORS (off unless `MMRAG_CORS_ORIGINS` lists origins).

- `X-Content-Type-Options: nosniff`: a browser never runs an upload or an error body as something else.
- `Referrer-Policy: no-referrer`: job and image URLs never leak to another site.
- API answers default to `Cache-Control: no-store` (job bodies, keys, problems); routes that may be cached,
  such as gallery images, set their own.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
API_PREFIX = "/v1/"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = str(scope.get("path", "")).startswith(API_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if is_api and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_http_headers(app: FastAPI, cors_origins: tuple[str, ...]) -> None:
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
            max_age=600,
        )
    # Added last, so outermost: CORS preflights and errors carry the headers too.
    app.add_middleware(SecurityHeaders)
