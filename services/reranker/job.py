"""The rerank stage: candidates of a search job → panorama → VLM → final order, always finishing the job."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis import Redis

from services.common.blobs import BlobStore, panorama_blob_id, read_query_image
from services.common.job_runner import JobGone, guard_attempts
from services.common.job_store import JobStore, UpdateResult, timing_fields, total_ms
from services.common.jobs import JobStage, JobStatus, RerankInfo, SearchParams, SearchResult
from services.common.logs import job_logger
from services.common.media import MediaStore
from services.common.ownership import Ownership, WorkItem, WorkKind
from services.common.settings import Settings
from services.reranker.rerank import RerankCandidate, RerankOutcome, rerank

logger = logging.getLogger(__name__)


@dataclass
class RerankContext:
    """What a reranker worker process holds for its whole life."""

    settings: Settings
    jobs: JobStore
    blobs: BlobStore
    media: MediaStore
    redis: Redis
    ownership: Ownership


def _apply(result: SearchResult, outcome: RerankOutcome, job_id: str) -> SearchResult:
    ordered = [result.candidates[i] for i in outcome.order]
    candidates = [c.model_copy(update={"rank": rank}) for rank, c in enumerate(ordered, start=1)]
    info = RerankInfo(
        status=outcome.status,
        model=outcome.model,
        best_id=candidates[0].id if outcome.status == "applied" and candidates else None,
        explanation=outcome.explanation,
        reason=outcome.reason,
        panorama_url=f"/v1/jobs/{job_id}/panorama" if outcome.panorama_jpeg else None,
        cached=outcome.cached,
    )
    return result.model_copy(update={"candidates": candidates, "rerank": info})


def run_rerank(ctx: RerankContext, job_id: str) -> None:
    item = WorkItem(WorkKind.RERANK, job_id)
    claimed = ctx.ownership.claim_stage(item, JobStage.RERANKING.value)
    if claimed is None:
        raise JobGone("another live reranker process is reranking it")
    if not claimed:
        raise JobGone("the job is no longer waiting for a rerank (ended, canceled or not yet searched)")
    try:
        _rerank_owned(ctx, job_id)
    finally:
        ctx.ownership.release(item)


def _rerank_owned(ctx: RerankContext, job_id: str) -> None:
    log = job_logger(logger, job_id)
    record = ctx.jobs.raw(job_id)
    guard_attempts(ctx.jobs, job_id, "rerank")
    params = SearchParams.model_validate_json(record["params"])
    result = SearchResult.model_validate_json(record["result"])
    started = time.perf_counter()
    candidates = [
        RerankCandidate(id=c.id, image=ctx.media.read(params.collection, c.id), metadata=c.metadata)
        for c in result.candidates
    ]
    try:
        outcome = rerank(
            # A text-only search has no query image (None); one gone by now is drawn as a placeholder (b"").
            None if params.query.text_only else read_query_image(params, ctx.blobs, ctx.media) or b"",
            params.instruction,
            candidates,
            settings=ctx.settings,
            redis=ctx.redis,
            seed=job_id,
            deadline=time.monotonic() + ctx.settings.rerank_budget_s,
        )
    except Exception:
        # A broken rerank must never cost the user the search: keep the vector order and say why.
        log.exception("reranking failed unexpectedly")
        outcome = RerankOutcome(
            status="failed",
            order=list(range(len(candidates))),
            explanation=None,
            reason="internal error in the reranker (logged with this job's id)",
            model=ctx.settings.llm_model,
            panorama_jpeg=None,
            vlm_ms=0.0,
            cached=False,
        )
    if outcome.panorama_jpeg:
        ctx.blobs.put(panorama_blob_id(job_id), outcome.panorama_jpeg)
    final = _apply(result, outcome, job_id)
    rerank_ms = (time.perf_counter() - started) * 1000
    changed = ctx.jobs.update(
        job_id,
        fields={
            "status": JobStatus.SUCCEEDED.value,
            "stage": JobStage.DONE.value,
            "result": final,
            **timing_fields(rerank=rerank_ms, vlm=outcome.vlm_ms, total=total_ms(record)),
        },
        owner=ctx.ownership.owner,  # refused if a process that took over from this one has the job now
    )
    if changed is UpdateResult.APPLIED:
        # The job is done: nothing reads its uploaded query image again (a late duplicate delivery draws a
        # placeholder, as for an expired one). Panoramas stay for GET /v1/jobs/{id}/panorama until the TTL.
        if params.query.blob_id is not None:
            ctx.blobs.delete(params.query.blob_id)
        log.info(
            "rerank %s in %.0f ms (VLM %.0f ms)%s",
            outcome.status,
            rerank_ms,
            outcome.vlm_ms,
            f": {outcome.reason}" if outcome.reason else "",
        )
