"""The search stage, batched: query images (+ instructions) → vectors in one forward pass → nearest gallery images.

A text-only search (an instruction, no image) goes through the model's text-only path in the same forward pass:
Visualized BGE embeds a batch that mixes both kinds of query (visualized_bge.py, `encode`).

A search task claims its own job and the searches waiting with it (services/common/search_claims.py explains
why this, and not celery-batches), then runs them together:
- one forward pass for every query of the batch;
- one Milvus call per group of searches with equal collection, filter and limit;
- one round trip to the job store per step, every job still moving through its own stages with its own timings
  and the size of the batch it ran in.
A failure ends only the jobs it concerns (an expired query image fails its search; a missing collection its
group), and a job claimed here never stays claimed: whatever goes wrong, every job of the batch ends or moves on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from services.common.blobs import read_query_image
from services.common.errors import InternalError, InvalidImage, InvalidRequest, MmragError, NotFound
from services.common.images import decode_for_model, reduced_min_side
from services.common.job_runner import MAX_ATTEMPTS
from services.common.job_store import UpdateResult, timing_fields, total_ms
from services.common.jobs import Candidate, JobStage, JobStatus, RerankInfo, SearchParams, SearchResult
from services.common.logs import job_logger
from services.common.queues import TASK_QUEUES, TaskName
from services.embedder.collections import open_for_search
from services.embedder.index import Hit
from services.embedder.ingest import decode_pool
from services.embedder.resources import Resources

logger = logging.getLogger(__name__)


@dataclass
class _Search:
    job_id: str
    record: dict[str, str]
    params: SearchParams
    queue_ms: float
    image: Image.Image | None = None
    vector_row: int = -1
    hits: list[Hit] = field(default_factory=list)
    search_ms: float = 0.0


@dataclass
class _Batch:
    """The jobs this process claimed; `open` are those not yet ended nor handed on."""

    resources: Resources
    searches: dict[str, _Search] = field(default_factory=dict)
    open: set[str] = field(default_factory=set)

    def fail(self, job_ids: Iterable[str], error: MmragError) -> None:
        changes = {
            job_id: {"status": JobStatus.FAILED.value, "stage": JobStage.DONE.value, "error": error.to_problem()}
            for job_id in job_ids
            if job_id in self.open
        }
        self.resources.jobs.update_many(changes, owner=self.resources.claims.owner)
        for job_id in changes:
            job_logger(logger, job_id).warning("search failed: %s", error.detail)
            self.open.discard(job_id)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def send_rerank(resources: Resources, job_id: str) -> None:
    resources.celery.send_task(TaskName.RERANK.value, args=[job_id], queue=TASK_QUEUES[TaskName.RERANK].value)


def run_search(resources: Resources, job_id: str) -> None:
    """The task of one search message: claim its job and whatever searches wait with it, and run them together."""
    claim = resources.claims.claim(job_id, resources.settings.search_batch_size)
    if claim.own != "claimed":
        # Ran in another batch, or with the reranker now, or ended. A rerank task lost with the embedder that
        # handed the job over is sent again by recovery (the embedder held the job until it had sent it), not
        # here: this message usually arrives while the rerank it would duplicate is running.
        job_logger(logger, job_id).debug("search message: the job is %s", claim.own)
    if claim.job_ids:
        run_batch(resources, claim.job_ids)


def serve_waiting_searches(resources: Resources) -> int:
    """Run the searches waiting now, if any: called between the forward passes of an index chunk, so a search
    waits at most for the pass already running. One cheap read when none wait."""
    if not resources.claims.waiting():
        return 0
    claim = resources.claims.claim(None, resources.settings.search_batch_size)
    if claim.job_ids:
        run_batch(resources, claim.job_ids)
    return len(claim.job_ids)


def run_batch(resources: Resources, job_ids: list[str]) -> None:
    batch = _Batch(resources, open=set(job_ids))
    try:
        _run(batch, job_ids)
    except SoftTimeLimitExceeded:
        batch.fail(list(batch.open), InternalError("the search ran past its time limit and was stopped"))
        raise
    except MmragError as error:  # the model, Redis or Milvus: every job still open shares the cause
        logger.warning("search batch of jobs %s failed: %s (cause: %r)", job_ids, error.detail, error.__cause__)
        batch.fail(list(batch.open), error)
    except Exception:
        logger.exception("search batch of jobs %s failed unexpectedly", job_ids)
        # Never the exception's text: it may hold addresses, paths or a library's internals.
        batch.fail(list(batch.open), InternalError("the search failed with an internal error, logged with its job id"))
    finally:
        resources.claims.release(job_ids)


def _run(batch: _Batch, job_ids: list[str]) -> None:
    r = batch.resources
    _load(batch, job_ids)
    _decode_queries(batch)
    searches = [batch.searches[job_id] for job_id in job_ids if job_id in batch.open]
    if not searches:
        return

    model = r.require_model()
    t0 = time.perf_counter()
    vectors = model.encode([s.image for s in searches], [s.params.instruction for s in searches])
    embed_ms = _ms(t0)
    for row, search in enumerate(searches):
        search.vector_row = row
        search.image = None  # the pixels are no longer needed: free them before Milvus

    # Every job moves to its own `searching` stage, with its queue and embed timings and its batch's size.
    advanced = r.jobs.update_many(
        {
            s.job_id: {
                "stage": JobStage.SEARCHING.value,
                "batch_size": str(len(searches)),
                **timing_fields(queue=s.queue_ms, embed=embed_ms),
            }
            for s in searches
        },
        owner=r.claims.owner,
    )
    _drop_refused(batch, advanced)

    groups: dict[tuple[str, str, int], list[_Search]] = {}
    for search in searches:
        if search.job_id in batch.open:
            key = (search.params.collection, search.params.model_dump_json(include={"filter"}), search.params.limit)
            groups.setdefault(key, []).append(search)
    for (collection, _, limit), members in groups.items():
        try:
            open_for_search(r, collection)
            t0 = time.perf_counter()
            rows = vectors[[s.vector_row for s in members]]
            found = r.index.search_many(collection, rows, limit, members[0].params.filter)
            search_ms = _ms(t0)
        except MmragError as error:
            batch.fail([s.job_id for s in members], error)
            continue
        for search, hits in zip(members, found, strict=True):
            search.hits, search.search_ms = hits, search_ms
    _finish(batch, searches, len(searches))


def _load(batch: _Batch, job_ids: list[str]) -> None:
    """Read the claimed jobs' records; end those that cannot run (attempts used up, bad record)."""
    r = batch.resources
    records = r.jobs.raw_many(job_ids)
    for job_id in job_ids:
        record = records.get(job_id)
        if record is None:  # expired since the claim: nobody can poll it any more
            batch.open.discard(job_id)
            continue
        # Counted per claim: a search whose batches kill their worker must not loop forever.
        attempts = int(record.get("attempts.search", 1))
        if attempts > MAX_ATTEMPTS:
            batch.fail(
                [job_id],
                InternalError(
                    f"the search stage was started {attempts} times and its worker died each time "
                    "(out of memory, or killed at its hard time limit?)"
                ),
            )
            continue
        params = SearchParams.model_validate_json(record["params"])
        if params.query.text_only and not (params.instruction or "").strip():
            # The gateway never queues one; a bad record must not fail the whole batch in the model.
            batch.fail([job_id], InvalidRequest("a search without a query image needs an instruction"))
            continue
        claimed_ts = float(record.get("claimed_ts") or time.time())
        queue_ms = (claimed_ts - float(record["created_ts"])) * 1000
        batch.searches[job_id] = _Search(job_id, record, params, queue_ms)


def _query_image(batch: _Batch, search: _Search) -> Image.Image:
    r = batch.resources
    data = read_query_image(search.params, r.blobs, r.media)
    if data is None:
        if search.params.query.blob_id is not None:
            raise NotFound("the uploaded query image has expired (MMRAG_JOB_TTL_S): submit the search again")
        raise NotFound(f"image {search.params.query.image_id} is no longer in collection {search.params.collection!r}")
    # Decoded at about twice the model's input, not in full (images.py: vectors within cosine 0.999).
    return decode_for_model(
        data,
        max_pixels=r.settings.max_image_pixels,
        min_side=reduced_min_side(r.require_model().image_size),
        what="query image",
        reduced=r.settings.decode_reduced,
    )


def _decode_queries(batch: _Batch) -> None:
    # A text-only search has no image to decode: the model embeds its instruction alone (image None).
    pending = [s for s in batch.searches.values() if s.job_id in batch.open and not s.params.query.text_only]

    def decode(search: _Search) -> Image.Image | MmragError:
        try:
            return _query_image(batch, search)
        except MmragError as error:
            return error
        except OSError as error:  # checked at upload; a blob altered since is still a clear error, not a crash
            logger.warning("[job %s] the stored query image cannot be decoded: %s", search.job_id, error)
            return InvalidImage("the query image cannot be decoded")

    pool = decode_pool(batch.resources.settings)
    outcomes = list(pool.map(decode, pending)) if len(pending) > 1 else [decode(s) for s in pending]
    for search, outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, MmragError):
            batch.fail([search.job_id], outcome)
        else:
            search.image = outcome


def _drop_refused(batch: _Batch, outcomes: dict[str, UpdateResult]) -> None:
    # Refused: canceled meanwhile, or taken over by another process after this one lost its lease.
    for job_id, outcome in outcomes.items():
        if outcome is not UpdateResult.APPLIED:
            job_logger(logger, job_id).info("search stopped: canceled or taken over elsewhere")
            batch.open.discard(job_id)


def _finish(batch: _Batch, searches: list[_Search], batch_size: int) -> None:
    """Hand each search on to the reranker or end it, in one round trip, then send the rerank tasks."""
    r = batch.resources
    changes: dict[str, dict[str, object]] = {}
    to_rerank: list[str] = []
    for search in searches:
        if search.job_id not in batch.open:
            continue
        job_id, params = search.job_id, search.params
        # Hits come best first: min_score cuts the tail, before any rerank sees it.
        kept = [hit for hit in search.hits if params.min_score is None or hit.score >= params.min_score]
        candidates = [
            Candidate(
                rank=rank,
                vector_rank=rank,
                id=hit.id,
                score=round(hit.score, 6),
                image_url=f"/v1/collections/{params.collection}/images/{hit.id}",
                metadata=hit.metadata,
            )
            for rank, hit in enumerate(kept, start=1)
        ]
        will_rerank = params.rerank and len(candidates) > 1
        if will_rerank:
            rerank = RerankInfo(status="pending", panorama_url=f"/v1/jobs/{job_id}/panorama")
        else:
            rerank = RerankInfo(status="skipped", reason=rerank_skipped_reason(params, len(search.hits), len(kept)))
        result = SearchResult(
            collection=params.collection,
            model=r.require_model().model_name,
            warning=r.warning,
            candidates=candidates,
            rerank=rerank,
            batch_size=batch_size,
        )
        timings = timing_fields(search=search.search_ms)
        if will_rerank:
            # Handed over with no owner: the reranker that takes it becomes its owner (ownership.claim_stage).
            changes[job_id] = {"stage": JobStage.RERANKING.value, "owner": "", "result": result, **timings}
            to_rerank.append(job_id)
        else:
            total = timing_fields(total=total_ms(search.record))
            changes[job_id] = {
                "status": JobStatus.SUCCEEDED.value,
                "stage": JobStage.DONE.value,
                "result": result,
                **timings,
                **total,
            }
    outcomes = r.jobs.update_many(changes, owner=r.claims.owner)
    for job_id, outcome in outcomes.items():
        batch.open.discard(job_id)
        if outcome is not UpdateResult.APPLIED:
            continue
        search = batch.searches[job_id]
        if job_id in to_rerank:
            send_rerank(r, job_id)
        elif search.params.query.blob_id is not None:
            r.blobs.delete(search.params.query.blob_id)  # the job is done: nothing reads its query image again
        job_logger(logger, job_id).info(
            "searched %r in a batch of %d: %d candidates in %.1f ms; %s",
            search.params.collection,
            batch_size,
            len(search.hits),
            search.search_ms,
            "sent to rerank" if job_id in to_rerank else "done",
        )


def rerank_skipped_reason(params: SearchParams, found: int, kept: int) -> str:
    """Why a search ends without a rerank: `found` hits came back from the index, `kept` passed min_score."""
    if not params.rerank:
        return "rerank=false in the request"
    if kept == 0 and found > 0:
        return f"nothing to rerank: all {found} candidates scored below min_score {params.min_score:g}"
    if kept == 0:
        return "nothing to rerank: the search found no candidates (is the filter too narrow?)"
    if kept < found:
        return f"fewer than two candidates to rerank ({found - kept} scored below min_score {params.min_score:g})"
    return "fewer than two candidates to rerank"
