"""The reranker worker: a Celery app on the `rerank` queue (CPU only: panorama + VLM call)."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from services.common.blobs import BlobStore, blob_root
from services.common.celery_app import create_celery
from services.common.heartbeat import Heartbeat, consumed_queues, process_owner, start_heartbeat, start_lease
from services.common.job_runner import job_failures
from services.common.job_store import JobStore
from services.common.media import MediaStore
from services.common.ownership import Ownership
from services.common.queues import TaskName
from services.common.redis_clients import worker_redis
from services.common.settings import HARD_LIMIT_GRACE_S, load_settings
from services.reranker.job import RerankContext, run_rerank

logger = logging.getLogger(__name__)
settings = load_settings()
app = create_celery(settings)
_context: RerankContext | None = None
_heartbeat: Heartbeat | None = None
_lease: Heartbeat | None = None


def context() -> RerankContext:
    """Per-process clients, created after the fork (a Redis connection must not be shared across one)."""
    global _context
    global _lease
    if _context is None:
        client = worker_redis(settings.redis_url)
        owner = process_owner()
        # Held until this process dies: the reranks it runs are its own while the lease lives.
        _lease = start_lease(client, owner, settings.lease_ttl_s)
        _context = RerankContext(
            settings=settings,
            jobs=JobStore(client, settings.job_ttl_s),
            blobs=BlobStore(blob_root(settings), settings.job_ttl_s),
            media=MediaStore(settings.media_dir),
            redis=client,
            ownership=Ownership(client, owner, settings.job_ttl_s),
        )
    return _context


@worker_ready.connect
def _announce(sender: Any, **_: Any) -> None:
    global _heartbeat
    _heartbeat = start_heartbeat(settings.redis_url, consumed_queues(sender), sender)
    if not settings.vlm_configured:
        logger.warning("no VLM configured (OPENAI_API_KEY / MMRAG_LLM_BASE_URL): reranks will be skipped")


@worker_process_shutdown.connect
def _end_lease(**_: Any) -> None:
    if _lease is not None:
        _lease.stop()


@worker_shutdown.connect
def _silence(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@app.task(
    name=TaskName.RERANK.value,
    soft_time_limit=settings.rerank_time_limit_s,
    time_limit=settings.rerank_time_limit_s + HARD_LIMIT_GRACE_S,
)
def rerank(job_id: str) -> None:
    ctx = context()
    with job_failures(ctx.jobs, job_id, logger, "rerank"):
        run_rerank(ctx, job_id)
