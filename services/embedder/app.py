"""The embedder worker: a Celery app on the search and index queues, one model and one Milvus client per process."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

import redis
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from services.common.broken_workers import report_broken
from services.common.celery_app import create_celery
from services.common.heartbeat import Heartbeat, consumed_queues, start_heartbeat
from services.common.settings import load_settings
from services.common.worker_probe import clear_model_ready, mark_model_ready, worker_node_name
from services.embedder.resources import Resources, load_resources

log = logging.getLogger(__name__)
settings = load_settings()
app = create_celery(settings)
_resources: Resources | None = None
_heartbeat: Heartbeat | None = None


def resources() -> Resources:
    """This process's resources, loaded on first use when the pool did not fork (solo, tests)."""
    global _resources
    if _resources is None:
        _resources = load_resources(settings, app)
    return _resources


@worker_process_init.connect
def _load_after_fork(**_: Any) -> None:
    loaded = resources()
    if loaded.model is None:
        # A worker that cannot embed must not take work: say why, then stop the whole worker (the main process
        # hands back any message it reserved). Its container is restarted with backoff. (broken_workers.py)
        node = f"{worker_node_name('embedder')}.{os.getppid()}"
        reason = f"the model could not be loaded: {loaded.model_error}"
        with contextlib.suppress(redis.RedisError):
            report_broken(loaded.redis, node, reason)
        log.error("%s; stopping this worker so that it takes no work", reason)
        os.kill(os.getppid(), signal.SIGTERM)
        return
    # For the readiness probe: this pool process can embed now (worker_probe.py).
    mark_model_ready(worker_node_name("embedder"), os.getpid())


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    clear_model_ready(worker_node_name("embedder"), os.getpid())
    if _resources is not None:
        _resources.lease.stop()
        _resources.index.close()


@worker_ready.connect
def _announce(sender: Any, **_: Any) -> None:
    global _heartbeat
    _heartbeat = start_heartbeat(settings.redis_url, consumed_queues(sender), sender)


@worker_shutdown.connect
def _silence(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


import services.embedder.tasks  # noqa: E402,F401  (registers the tasks on `app`)
