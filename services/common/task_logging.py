"""Per-task log context in the workers: the job id, the request id that created the job, the stage, the duration.

Every task's first argument is a job id. Before the task runs, its job's request id is read from the job record
(one HGET) into the log context, so every line the task writes carries both ids; after it ran, one line says
how long it took. A Redis error here never fails a task: the line just lacks the request id.
"""

from __future__ import annotations

import logging
import time
from contextvars import Token
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun

from services.common.job_store import job_key
from services.common.logs import job_id_var, request_id_var, stage_var

logger = logging.getLogger(__name__)

_clients: dict[str, redis.Redis] = {}
_running: dict[str, tuple[float, list[Token[Any]]]] = {}


def _stage(task_name: str) -> str:
    return task_name.rsplit(".", 1)[-1]  # mmrag.embedder.search → search


def _request_id(redis_url: str, job_id: str) -> str | None:
    client = _clients.get(redis_url)
    if client is None:
        client = _clients[redis_url] = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        value = client.hget(job_key(job_id), "request_id")
    except redis.RedisError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _before(task_id: str, task: Any, args: tuple[Any, ...] | None, **_: Any) -> None:
    job_id = args[0] if args and isinstance(args[0], str) else None
    request_id = _request_id(str(task.app.conf.broker_url), job_id) if job_id else None
    tokens: list[Token[Any]] = [
        job_id_var.set(job_id),
        request_id_var.set(request_id),
        stage_var.set(_stage(str(task.name))),
    ]
    _running[task_id] = (time.perf_counter(), tokens)


def _after(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started, tokens = _running.pop(task_id, (None, []))
    if started is not None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        logger.info(
            "task %s %s in %.0f ms",
            task.name,
            (state or "done").lower(),
            duration_ms,
            extra={"duration_ms": duration_ms},
        )
    for token in reversed(tokens):
        token.var.reset(token)


def install_task_logging() -> None:
    """Connect the handlers (idempotent: Celery keys receivers by dispatch_uid)."""
    task_prerun.connect(_before, weak=False, dispatch_uid="mmrag-task-log-before")
    task_postrun.connect(_after, weak=False, dispatch_uid="mmrag-task-log-after")
