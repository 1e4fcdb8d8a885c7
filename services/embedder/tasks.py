"""The embedder's Celery tasks: thin wrappers that hand a job id to the domain modules."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task

from services.common.job_runner import attempts_field, job_failures
from services.common.ownership import WorkItem, WorkKind
from services.common.queues import Queue, TaskName
from services.common.settings import HARD_LIMIT_GRACE_S
from services.embedder.app import app, resources, settings
from services.embedder.index import VectorIndexUnavailable
from services.embedder.ingest import run_delete, run_index_chunk
from services.embedder.resources import Resources
from services.embedder.search import run_search, serve_waiting_searches

logger = logging.getLogger(__name__)


def _limits(seconds: float) -> dict[str, float]:
    # The soft limit raises inside the task so the job ends with a clear error; the hard one kills the
    # child if it does not return (prefork applies both).
    return {"soft_time_limit": seconds, "time_limit": seconds + HARD_LIMIT_GRACE_S}


def _serves_searches() -> bool:
    # The queues chosen with --queues (inherited by the pool processes); all of them when none were chosen.
    return Queue.SEARCH.value in app.amqp.queues.consume_from


@app.task(name=TaskName.SEARCH.value, **_limits(settings.search_time_limit_s))
def search(job_id: str) -> None:
    # run_search ends every job it claimed, whatever happens; this guards the claim itself.
    r = resources()
    with job_failures(r.jobs, job_id, logger, "search"):
        run_search(r, job_id)


# A chunk that finds Milvus down is retried after 2, 4, 8 … 60 s, for about ten minutes in all, then fails its job.
INDEX_RETRIES = 14


@app.task(bind=True, name=TaskName.INDEX.value, max_retries=INDEX_RETRIES, **_limits(settings.index_time_limit_s))
def index(self: Task, job_id: str, chunk: int) -> None:
    r = resources()
    # A search that arrives during a chunk runs after the forward pass in progress, not after the whole chunk.
    # An embedder kept for index work (--only index) leaves searches to the others.
    between = (lambda: serve_waiting_searches(r)) if _serves_searches() else None
    what = f"indexing chunk {chunk}"
    # Held while it runs: if this process dies, recovery sends the chunk again within the lease time.
    with job_failures(r.jobs, job_id, logger, what), held(r, WorkItem(WorkKind.INDEX, job_id, chunk)):
        try:
            run_index_chunk(r, job_id, chunk, between)
        except VectorIndexUnavailable as error:
            if self.request.retries >= INDEX_RETRIES:
                raise  # the job fails as unavailable
            r.jobs.uncount(job_id, attempts_field(what))  # an outage, not a worker death
            countdown = min(60, 2 ** (self.request.retries + 1))
            logger.warning("[job %s] chunk %d: %s; retrying in %d s", job_id, chunk, error.detail, countdown)
            # Counted once all the same: a chunk is counted when it completes (job_store.complete_chunk).
            raise self.retry(countdown=countdown) from error


@app.task(name=TaskName.DELETE_IMAGE.value, **_limits(settings.search_time_limit_s))
def delete_image(job_id: str) -> None:
    r = resources()
    with job_failures(r.jobs, job_id, logger, "delete"), held(r, WorkItem(WorkKind.DELETE, job_id)):
        run_delete(r, job_id)


@contextmanager
def held(r: Resources, item: WorkItem) -> Iterator[None]:
    r.ownership.hold(item)
    try:
        yield
    finally:
        r.ownership.release(item)
