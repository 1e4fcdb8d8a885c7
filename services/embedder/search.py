"""The search stage: query image (+ instruction) → vector → nearest gallery images → rerank or done."""

from __future__ import annotations

import logging
import time

from services.common.blobs import read_query_image
from services.common.errors import NotFound
from services.common.images import open_rgb
from services.common.job_runner import JobGone, guard_attempts
from services.common.job_store import UpdateResult, timing_fields, total_ms
from services.common.jobs import Candidate, JobStage, JobStatus, RerankInfo, SearchParams, SearchResult
from services.common.logs import job_logger
from services.common.queues import TASK_QUEUES, TaskName
from services.embedder.collections import open_for_search
from services.embedder.resources import Resources

logger = logging.getLogger(__name__)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _query_image(resources: Resources, params: SearchParams) -> bytes:
    data = read_query_image(params, resources.blobs, resources.media)
    if data is not None:
        return data
    if params.query.blob_id is not None:
        raise NotFound("the uploaded query image has expired (MMRAG_JOB_TTL_S): submit the search again")
    raise NotFound(f"image {params.query.image_id} is no longer in collection {params.collection!r}")


def send_rerank(resources: Resources, job_id: str) -> None:
    resources.celery.send_task(TaskName.RERANK.value, args=[job_id], queue=TASK_QUEUES[TaskName.RERANK].value)


def run_search(resources: Resources, job_id: str) -> None:
    log = job_logger(logger, job_id)
    record = resources.jobs.raw(job_id)
    if JobStatus(record["status"]).is_terminal:
        raise JobGone(f"job is already {record['status']}")
    if record["stage"] == JobStage.RERANKING.value:
        # Redelivered after the hand-off: the rerank task may have been lost with the worker, and
        # reranking is idempotent, so send it again rather than search again.
        send_rerank(resources, job_id)
        return
    guard_attempts(resources.jobs, job_id, "search")
    params = SearchParams.model_validate_json(record["params"])
    queue_ms = (time.time() - float(record["created_ts"])) * 1000

    def advance(stage: JobStage, **fields: object) -> None:
        changed = resources.jobs.update(
            job_id, fields={"status": JobStatus.RUNNING.value, "stage": stage.value, **fields}
        )
        if changed is not UpdateResult.APPLIED:
            raise JobGone("job was canceled or finished elsewhere")

    advance(JobStage.EMBEDDING, **timing_fields(queue=queue_ms))
    info = open_for_search(resources, params.collection)
    model = resources.require_model()
    image = open_rgb(_query_image(resources, params))
    t0 = time.perf_counter()
    vector = model.encode([image], [params.instruction])[0]
    embed_ms = _ms(t0)

    advance(JobStage.SEARCHING, **timing_fields(embed=embed_ms))
    t0 = time.perf_counter()
    hits = resources.index.search(params.collection, vector, params.limit, params.filter)
    search_ms = _ms(t0)

    candidates = [
        Candidate(
            rank=rank,
            vector_rank=rank,
            id=hit.id,
            score=round(hit.score, 6),
            image_url=f"/v1/collections/{params.collection}/images/{hit.id}",
            metadata=hit.metadata,
        )
        for rank, hit in enumerate(hits, start=1)
    ]
    will_rerank = params.rerank and len(candidates) > 1
    if will_rerank:
        rerank = RerankInfo(status="pending", panorama_url=f"/v1/jobs/{job_id}/panorama")
    else:
        reason = "rerank=false in the request" if not params.rerank else "fewer than two candidates to rerank"
        rerank = RerankInfo(status="skipped", reason=reason)
    result = SearchResult(
        collection=params.collection, model=info.model, warning=resources.warning, candidates=candidates, rerank=rerank
    )
    if will_rerank:
        advance(JobStage.RERANKING, result=result, **timing_fields(search=search_ms))
        send_rerank(resources, job_id)
        log.info("searched %r: %d candidates in %.1f ms; sent to rerank", params.collection, len(hits), search_ms)
        return
    changed = resources.jobs.update(
        job_id,
        fields={
            "status": JobStatus.SUCCEEDED.value,
            "stage": JobStage.DONE.value,
            "result": result,
            **timing_fields(search=search_ms, total=total_ms(record)),
        },
    )
    if changed is UpdateResult.APPLIED:
        log.info("searched %r: %d candidates in %.1f ms; done", params.collection, len(hits), search_ms)
