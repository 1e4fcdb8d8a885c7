"""POST /v1/searches: validate everything, store the query image, create the job, queue it by name."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from services.common.blobs import query_blob_id
from services.common.errors import Conflict, NotFound
from services.common.images import inspect_image
from services.common.job_store import decode_job, new_job_id, new_record
from services.common.jobs import Job, JobKind, SearchParams, SearchQuery
from services.common.queues import TaskName
from services.gateway.api_contract import form_schema, model_schema, problems
from services.gateway.auth import AUTH_RESPONSES, Principal, SearchAccess
from services.gateway.ownership import stamp_owner
from services.gateway.search_request import SearchRequestBody, parse_search_request
from services.gateway.state import GatewayState, StateDep

router = APIRouter(prefix="/v1", tags=["searches"], responses=AUTH_RESPONSES)
log = logging.getLogger(__name__)
IDEMPOTENCY_PREFIX = "mmrag:idempotency:"
# How long a request that lost the claim on an Idempotency-Key waits for the winner to store the job it creates.
CLAIMED_JOB_WAIT_S = 5.0

_REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": form_schema(SearchRequestBody, files={"image_base64": "image"}, json_fields={"filter"})
            },
            "application/json": {"schema": model_schema(SearchRequestBody)},
        },
    }
}


def job_location(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def _idempotency_key(principal: Principal, key: str) -> str:
    # Per API key: another key sending the same Idempotency-Key must never be handed this key's job.
    return IDEMPOTENCY_PREFIX + (f"{principal.name}:{key}" if principal.name else key)


async def _replay(state: GatewayState, key: str, fingerprint: str, response: Response) -> Job | None:
    """The job an earlier request with this Idempotency-Key (scoped by `_idempotency_key`) created, if any."""
    stored = await state.redis.get(key)
    if stored is None:
        return None
    earlier = json.loads(stored)
    if earlier["fingerprint"] != fingerprint:
        # 409 `conflict`: the IETF draft on Idempotency-Key suggests 422 for a reused key, but 422 is `invalid-image`
        # in mmrag's closed set of problem types (one status per type), and the body itself is valid.
        raise Conflict("this Idempotency-Key was used for a different request: use a new key")
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = job_location(earlier["job_id"])
    # A concurrent request may have claimed the key a moment ago and not stored its job yet.
    deadline = time.monotonic() + CLAIMED_JOB_WAIT_S
    while True:
        try:
            return await state.jobs.get(earlier["job_id"])
        except NotFound:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.01)


@router.post(
    "/searches",
    status_code=202,
    response_model=Job,
    openapi_extra=_REQUEST_BODY_DOC,
    responses=problems(
        {
            400: "A field, the content type or the query is not valid (send an image, an image_id, or an instruction "
            "alone)",
            409: "This Idempotency-Key was used before for a different request (type `conflict`)",
            404: "The collection does not exist, or `image_id` is not in it",
            413: "The image is larger than MMRAG_MAX_UPLOAD_MB",
            422: "The image cannot be used: not an image, truncated, or too many pixels (type `invalid-image`)",
            503: "Too many searches are waiting for a worker, or Redis or the job queue is unavailable (with "
            "`Retry-After`)",
        }
    ),
    summary="Start a search job: an image (or an indexed image id) with an optional instruction, or text alone",
)
async def create_search(
    request: Request,
    response: Response,
    state: StateDep,
    principal: SearchAccess,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> Job:
    settings = state.settings
    search = await parse_search_request(request, settings)
    body = search.body
    principal.check_collection(body.collection)
    if idempotency_key:
        idempotency_key = _idempotency_key(principal, idempotency_key)

    fingerprint = hashlib.sha256(
        body.model_dump_json(exclude={"image_base64"}).encode() + hashlib.sha256(search.image or b"").digest()
    ).hexdigest()
    if idempotency_key and (earlier := await _replay(state, idempotency_key, fingerprint, response)):
        return earlier

    if await state.collections.get(body.collection) is None:
        raise NotFound(f"collection {body.collection!r} does not exist: index images into it first")
    if search.image is not None:
        await run_in_threadpool(inspect_image, search.image, max_pixels=settings.max_image_pixels, what="image")
    elif body.image_id is not None and state.media.find(body.collection, body.image_id) is None:
        raise NotFound(f"image {body.image_id} is not in collection {body.collection!r}")

    job_id = new_job_id()
    await state.admission.admit(principal, JobKind.SEARCH, job_id)
    if idempotency_key:
        claimed = await state.redis.set(
            idempotency_key,
            json.dumps({"job_id": job_id, "fingerprint": fingerprint}),
            nx=True,
            ex=settings.job_ttl_s,
        )
        if not claimed and (earlier := await _replay(state, idempotency_key, fingerprint, response)):
            return earlier

    params = SearchParams(
        collection=body.collection,
        instruction=body.instruction,
        limit=body.limit,
        min_score=body.min_score,
        rerank=body.rerank,
        filter=body.filter or {},
        query=SearchQuery(blob_id=query_blob_id(job_id) if search.image is not None else None, image_id=body.image_id),
    )
    if search.image is not None:
        await state.blobs.put(query_blob_id(job_id), search.image)
    record = stamp_owner(new_record(job_id, JobKind.SEARCH, params), principal)
    await state.jobs.create(record)
    await state.send_or_fail(TaskName.SEARCH, job_id)
    log.info("[job %s] search queued on collection %r", job_id, body.collection)
    response.headers["Location"] = job_location(job_id)
    return decode_job(record)
