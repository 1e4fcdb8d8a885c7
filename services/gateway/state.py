"""What the gateway's routes share for the life of the process, as typed FastAPI dependencies."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Annotated, Any

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from services.common.api_keys import AsyncKeyStore
from services.common.blobs import AsyncBlobStore
from services.common.collections import AsyncCollectionRegistry
from services.common.errors import Unavailable
from services.common.job_store import AsyncJobStore
from services.common.media import MediaStore
from services.common.queues import TASK_QUEUES, TaskName
from services.common.settings import Settings
from services.gateway.admission import Admission
from services.gateway.auth import Authenticator
from services.gateway.job_events import JobEvents
from services.gateway.rate_limits import RateLimiter

log = logging.getLogger(__name__)


@dataclass
class GatewayState:
    settings: Settings
    redis: aioredis.Redis
    jobs: AsyncJobStore
    blobs: AsyncBlobStore
    collections: AsyncCollectionRegistry
    media: MediaStore
    celery: Celery
    events: JobEvents
    keys: AsyncKeyStore
    authenticator: Authenticator
    rate_limiter: RateLimiter
    admission: Admission

    async def send(self, task: TaskName, *args: Any) -> None:
        """Queue a task by name: the gateway never imports worker code (nor torch, nor pymilvus)."""
        await run_in_threadpool(self.celery.send_task, task.value, args=list(args), queue=TASK_QUEUES[task].value)

    async def send_or_fail(self, task: TaskName, job_id: str, *args: Any) -> None:
        """Queue a job's task; if the broker refuses, end the job as failed rather than leave it queued."""
        try:
            await self.send(task, job_id, *args)
        except Exception as error:
            log.error("[job %s] could not queue %s: %s", job_id, task.value, error)
            failure = Unavailable("the job queue is unavailable: retry shortly")
            with contextlib.suppress(Exception):
                await self.jobs.fail(job_id, failure.to_problem())
            raise failure from None


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]
