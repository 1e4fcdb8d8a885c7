"""The web app: static files served at `/`, under a Content-Security-Policy that allows this origin only.

No build step: the files in `static/` are what the browser runs (plain ES modules, HTML and CSS).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PATH = "/static"

# No inline script or style, nothing from another origin, never framed. `blob:` images are the query image's
# preview and images fetched with an API key; `data:` is never needed.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
APP_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page and its modules change together on upgrade; revalidating keeps them from mixing versions.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class AppStaticFiles(StaticFiles):
    """Starlette's static files (safe paths, ETags, ranges) with the app's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(APP_HEADERS)
        return response


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=APP_HEADERS)


static_files = AppStaticFiles(directory=STATIC_DIR)
