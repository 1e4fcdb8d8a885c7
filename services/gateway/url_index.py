"""Index jobs from URLs: `POST /v1/collections/{name}/images` with a JSON body of `{"items": [{"url", "metadata"}]}`.

The gateway only checks the request (JSON shape, item count, each URL's syntax and scheme) and queues the same
index job as an upload, chunk by chunk; it never connects to a URL. The embedder workers fetch (SSRF-safe, see
services/embedder/fetch.py) and list every URL they refuse or fail in the job's progress.failed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import InvalidRequest, PayloadTooLarge
from services.common.job_store import new_job_id, new_record
from services.common.jobs import IndexParams, Job, JobKind, UrlItem
from services.common.metadata import metadata_size
from services.common.queues import TaskName
from services.gateway.auth import Principal
from services.gateway.index_upload import reserve_collection
from services.gateway.ownership import stamp_owner
from services.gateway.routes.searches import job_location
from services.gateway.state import GatewayState

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
SCHEMES = ("http", "https")


class UrlIndexItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_CHARS, description="an http or https URL of a JPEG, PNG, WebP, GIF or BMP")
    metadata: dict[str, Any] = Field(default_factory=dict, description="stored with the image, as for an upload")


class UrlIndexRequest(BaseModel):
    """The JSON body of an index request from URLs."""

    model_config = ConfigDict(extra="forbid")

    items: list[UrlIndexItem] = Field(min_length=1, description="at most MMRAG_MAX_INDEX_FILES items")


# The JSON alternative of the route's request body, for its OpenAPI document (written out: the route reads the body
# itself, as it does the multipart one).
URL_INDEX_BODY_DOC: dict[str, Any] = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["items"],
            "additionalProperties": False,
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "description": "at most MMRAG_MAX_INDEX_FILES items; the workers fetch each URL",
                    "items": {
                        "type": "object",
                        "required": ["url"],
                        "additionalProperties": False,
                        "properties": {
                            "url": {"type": "string", "format": "uri", "maxLength": MAX_URL_CHARS},
                            "metadata": {"type": "object", "description": "stored with the image, as for an upload"},
                        },
                    },
                }
            },
        }
    }
}


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a URL to fetch, judged from its text alone; None when it may be queued."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        return f"not a valid URL ({error})"
    if parsed.scheme not in SCHEMES:
        return f"only http and https URLs can be fetched, not {parsed.scheme or 'a URL without a scheme'}"
    if not parsed.host:
        return "the URL names no host"
    if parsed.userinfo:
        # Credentials would be kept in the job record and the logs.
        return "a URL with a user name or password (user:password@host) is not accepted"
    return None


def _field_path(location: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")


def parse_url_items(body: bytes, max_items: int) -> list[UrlItem]:
    """The items of a JSON index request; InvalidRequest names the item and field to fix, PayloadTooLarge the
    limit on items."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f'the body is not JSON ({error}): send {{"items": [{{"url": "https://…"}}]}}') from None
    items = document.get("items") if isinstance(document, dict) else None
    if isinstance(items, list) and len(items) > max_items:
        raise PayloadTooLarge(f"at most {max_items:,} items per request (MMRAG_MAX_INDEX_FILES); got {len(items):,}")
    try:
        request = UrlIndexRequest.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = _field_path(tuple(first["loc"])) or "body"
        raise InvalidRequest(
            f'{where}: {first["msg"]} (expected {{"items": [{{"url": "https://…", "metadata": {{…}}}}]}})'
        ) from None
    for number, item in enumerate(request.items):
        problem = url_problem(item.url)
        if problem is not None:
            raise InvalidRequest(f"items[{number}].url: {problem}")
    return [UrlItem(url=item.url, metadata=item.metadata) for item in request.items]


async def index_urls(name: str, request: Request, response: Response, state: GatewayState, principal: Principal) -> Job:
    """Queue an index job whose chunks are URLs to fetch (the route has checked the collection name and access)."""
    settings = state.settings
    items = parse_url_items(await request.body(), settings.max_index_files)
    # The same bounds as an upload: metadata per image (MMRAG_MAX_METADATA_BYTES) and the collection cap.
    for number, item in enumerate(items):
        if metadata_size(item.metadata) > settings.max_metadata_bytes:
            raise PayloadTooLarge(
                f"items[{number}].metadata is larger than {settings.max_metadata_bytes:,} bytes "
                "(MMRAG_MAX_METADATA_BYTES): keep per-image metadata short"
            )
    await reserve_collection(state.collections, name, settings)
    job_id = new_job_id()
    await state.admission.admit(principal, JobKind.INDEX, job_id)
    size = settings.index_batch_size
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    record = new_record(
        job_id,
        JobKind.INDEX,
        IndexParams(collection=name, chunks=len(chunks), source="url"),
        total=len(items),
        chunks=len(chunks),
    )
    await state.jobs.create(
        stamp_owner(record, principal), [[item.model_dump(mode="json") for item in chunk] for chunk in chunks]
    )
    for number in range(len(chunks)):
        await state.send_or_fail(TaskName.INDEX, job_id, number)
    log.info("[job %s] fetching %d URLs into %r in %d chunks", job_id, len(items), name, len(chunks))
    response.headers["Location"] = job_location(job_id)
    return await state.jobs.get(job_id)
