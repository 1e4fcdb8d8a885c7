"""What an embedder worker process holds for its whole life: the model, Milvus, and the stores.

Built once per process after the fork (never before: CUDA and Milvus Lite's file lock do not survive one).
If the model cannot be loaded, the error is kept and every job fails with it, instead of the pool
restarting a child that can never start.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from celery import Celery

from services.common.blobs import BlobStore, blob_root
from services.common.collections import CollectionRegistry
from services.common.errors import Unavailable
from services.common.heartbeat import Heartbeat, process_owner, start_lease
from services.common.job_store import JobStore
from services.common.media import MediaStore
from services.common.ownership import Ownership
from services.common.redis_clients import worker_redis
from services.common.search_claims import SearchClaims
from services.common.settings import Settings
from services.common.worker_metrics import CountingEncoder, record_model_load
from services.common.worker_metrics import enabled as worker_metrics_enabled
from services.embedder.index import VectorIndex

if TYPE_CHECKING:
    from services.embedder.model_loading import Encoder

log = logging.getLogger(__name__)

RANDOM_MODEL_WARNING = "tiny-random: an untrained model with random weights; these results are not meaningful"


@dataclass
class Resources:
    settings: Settings
    celery: Celery
    redis: redis.Redis
    jobs: JobStore
    blobs: BlobStore
    media: MediaStore
    collections: CollectionRegistry
    index: VectorIndex
    claims: SearchClaims
    ownership: Ownership
    lease: Heartbeat
    model: Encoder | None
    model_error: str | None

    def require_model(self) -> Encoder:
        if self.model is None:
            # Why is in the embedder's log and on /readyz?full=1, for the operator; the job says who must act.
            raise Unavailable("the embedder could not load its model: an operator must fix its configuration")
        return self.model

    @property
    def warning(self) -> str | None:
        return RANDOM_MODEL_WARNING if self.model is not None and self.model.is_random else None


def cpu_threads(settings: Settings) -> int:
    """The model's CPU threads: MMRAG_TORCH_THREADS, else every CPU this process may use but one."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, available - 1)


def load_resources(settings: Settings, celery: Celery) -> Resources:
    import torch

    from services.embedder.model_loading import load_model, warm_up

    torch.set_num_threads(cpu_threads(settings))
    client = worker_redis(settings.redis_url)
    model: Encoder | None = None
    model_error: str | None = None
    started = time.perf_counter()
    try:
        model = load_model(
            settings.model,
            weights=settings.model_weights,
            device=settings.device,
            dtype=settings.dtype,
            backend=settings.encoder_backend,
        )
        rate = warm_up(model, settings.encode_batch_size)
        record_model_load(time.perf_counter() - started)
        if worker_metrics_enabled():
            model = CountingEncoder(model)  # counts real work only: the warm-up is done
        log.info(
            "model %s loaded in %.1f s on %s/%s (%d CPU threads); warm-up rate %.1f images/s",
            settings.model,
            time.perf_counter() - started,
            model.device,
            model.dtype,
            torch.get_num_threads(),
            rate,
        )
    except Exception as error:
        model_error = f"{type(error).__name__}: {error}"
        log.error("model %s could not be loaded: %s", settings.model, model_error)
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
    if not settings.milvus_is_server:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = VectorIndex(
        settings.resolved_milvus_uri,
        token=token,
        is_server=settings.milvus_is_server,
        timeout_s=settings.milvus_timeout_s,
    )
    # Held from now until the process dies: the searches this process claims are its own while the lease lives.
    owner = process_owner()
    lease = start_lease(client, owner, settings.lease_ttl_s)
    return Resources(
        settings=settings,
        celery=celery,
        redis=client,
        jobs=JobStore(client, settings.job_ttl_s),
        blobs=BlobStore(blob_root(settings), settings.job_ttl_s),
        media=MediaStore(settings.media_dir),
        collections=CollectionRegistry(client),
        index=index,
        claims=SearchClaims(client, owner, settings.job_ttl_s),
        ownership=Ownership(client, owner, settings.job_ttl_s),
        lease=lease,
        model=model,
        model_error=model_error,
    )
