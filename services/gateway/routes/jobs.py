"""Polling, long-polling and canceling jobs, and the panorama a search showed the VLM."""

from __future__ import annotations

import re
from datetime import datetime

from fastapi import APIRouter, Query, Response

from services.common.blobs import panorama_blob_id
from services.common.errors import NotFound
from services.common.jobs import Job
from services.gateway.api_contract import binary_content, problems
from services.gateway.auth import AUTH_RESPONSES, JobAccess, Principal
from services.gateway.ownership import check_job_access
from services.gateway.state import GatewayState, StateDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_RESPONSES)
MAX_WAIT_S = 60.0
_JOB_ID = re.compile(r"[0-9a-f]{32}\Z")  # \Z: `$` would match before a trailing newline
_NO_SUCH_JOB = "No job has this id (it may have expired), or it belongs to another API key"


async def _visible(state: GatewayState, principal: Principal, job_id: str) -> str:
    """The id, once it is well-formed and the caller may see the job; else 404."""
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound(f"job {job_id[:80]!r} does not exist: job ids are 32 hex characters")
    await check_job_access(state.redis, principal, job_id)
    return job_id


@router.get(
    "/{job_id}",
    response_model=Job,
    responses=problems(
        {
            400: "`wait` is outside 0–60 or `since` is not a date-time",
            404: _NO_SUCH_JOB,
            429: "Over the key's rate, or (with `wait`) this gateway process already holds MMRAG_MAX_LONG_POLLS "
            "long-polls (with `Retry-After`)",
        }
    ),
    summary="A job; ?wait=N long-polls up to N s for a change",
)
async def get_job(
    job_id: str,
    state: StateDep,
    principal: JobAccess,
    wait: float = Query(default=0, ge=0, le=MAX_WAIT_S, description="seconds to wait for a change"),
    since: datetime | None = Query(
        default=None, description="the `updated_at` the client has seen: a job changed since then is returned at once"
    ),
) -> Job:
    # With `since`, a change the client has not seen yet (between its last answer and this request) comes back
    # at once; without it, the wait is for a change from the job as it is when the request arrives.
    return await state.events.wait_for_change(state.jobs, await _visible(state, principal, job_id), wait, since=since)


@router.delete(
    "/{job_id}",
    response_model=Job,
    responses=problems({404: _NO_SUCH_JOB}),
    summary="Cancel a job; a finished job is returned unchanged",
)
async def cancel_job(job_id: str, state: StateDep, principal: JobAccess) -> Job:
    await state.jobs.get(await _visible(state, principal, job_id))
    return await state.jobs.cancel(job_id)


@router.get(
    "/{job_id}/panorama",
    response_class=Response,
    responses={
        200: {"description": "The panorama", "content": binary_content("image/jpeg")},
        **problems({404: _NO_SUCH_JOB + ", or it has no panorama (yet)"}),
    },
    summary="The JPEG the reranker sent to the VLM",
)
async def get_panorama(job_id: str, state: StateDep, principal: JobAccess) -> Response:
    job = await state.jobs.get(await _visible(state, principal, job_id))
    data = await state.blobs.get(panorama_blob_id(job_id))
    if data is None:
        raise NotFound(
            f"job {job_id} has no panorama (status {job.status.value}, stage {job.stage.value}): it is built "
            "in the reranking stage, and only when rerank is on and there are at least two candidates"
        )
    return Response(content=data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
