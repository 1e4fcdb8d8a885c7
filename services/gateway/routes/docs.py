"""`/docs`: Swagger UI served from the gateway itself, so it loads offline and under a strict CSP.

FastAPI's default page pulls Swagger UI from a CDN and starts it with an inline script. Here the assets come
from the pinned `swagger-ui-bundle-v2` package and the start-up code is a file of the web app's static folder.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from services.common.errors import NotFound
from services.gateway.routes.webapp import STATIC_PATH

ASSETS_PATH = f"/docs/assets/{swagger_ui_path.name}"
# Only what the page uses; the package's demo index.html (petstore, inline script) is not served.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# The app's policy, except that Swagger UI's stylesheet draws its icons from data: URIs (checked in Chromium).
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)

router = APIRouter(include_in_schema=False)


def docs_html(title: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} — API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{STATIC_PATH}/docs/init.js"></script>
</body>
</html>
"""


@router.get("/docs")
async def docs() -> HTMLResponse:
    return HTMLResponse(
        docs_html("mmrag"),
        headers={"Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


@router.get(ASSETS_PATH + "/{name}")
async def docs_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no documentation asset is named {name[:80]!r}")
    # The version is in the path: a new Swagger UI gets a new URL, so the files never change under one.
    return FileResponse(
        swagger_ui_path / name, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable"}
    )
