"""The gateway: an HTTP front for jobs. It validates, stores, queues by name and reads job records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from services.common.blobs import AsyncBlobStore
from services.common.celery_app import create_celery
from services.common.collections import AsyncCollectionRegistry
from services.common.job_store import AsyncJobStore
from services.common.media import MediaStore
from services.common.settings import Settings, load_settings
from services.gateway.job_events import JobEvents
from services.gateway.problems import install_dependency_handlers, install_problem_handlers
from services.gateway.recovery import run_recovery
from services.gateway.routes import collections, health, jobs, searches, webapp
from services.gateway.state import GatewayState


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url, max_connections=256)
        app.state.gateway = GatewayState(
            settings=settings,
            redis=client,
            jobs=AsyncJobStore(client, settings.job_ttl_s),
            blobs=AsyncBlobStore(client, settings.job_ttl_s),
            collections=AsyncCollectionRegistry(client),
            media=MediaStore(settings.media_dir),
            celery=create_celery(settings),
            events=JobEvents(client),
        )
        app.state.gateway.events.start()
        recovery = asyncio.create_task(run_recovery(app.state.gateway), name="job-recovery")
        try:
            yield
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
            await app.state.gateway.events.stop()
            await client.aclose()

    app = FastAPI(
        title="mmrag",
        version="1",
        summary="Composed image search: image + instruction → ranked gallery images, as asynchronous jobs",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    install_dependency_handlers(app)
    for module in (searches, jobs, collections, health, webapp):
        app.include_router(module.router)
    app.mount(webapp.STATIC_PATH, webapp.static_files, name="static")
    return app
