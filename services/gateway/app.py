"""The gateway: an HTTP front for jobs. It validates, stores, queues by name and reads job records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from services.common.api_keys import AsyncKeyStore
from services.common.blobs import AsyncBlobStore, blob_root
from services.common.celery_app import create_celery
from services.common.collections import AsyncCollectionRegistry
from services.common.job_store import AsyncJobStore
from services.common.logs import ensure_logging
from services.common.media import MediaStore
from services.common.settings import Settings, load_settings
from services.gateway.admission import Admission
from services.gateway.api_contract import APP_RESPONSES, SERVER_ERROR_RESPONSES, contract_document, operation_id
from services.gateway.auth import Authenticator
from services.gateway.body_limits import install_body_limits
from services.gateway.http_headers import install_http_headers
from services.gateway.job_events import JobEvents
from services.gateway.metrics import install_metrics
from services.gateway.problems import install_dependency_handlers, install_problem_handlers
from services.gateway.rate_limits import RateLimiter
from services.gateway.recovery import run_recovery
from services.gateway.routes import collections, docs, health, jobs, keys, searches, webapp
from services.gateway.state import GatewayState


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    ensure_logging("gateway")  # uvicorn's worker processes are spawned without the parent's logging set-up

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url, max_connections=256)
        key_store = AsyncKeyStore(client)
        app.state.gateway = GatewayState(
            settings=settings,
            redis=client,
            jobs=AsyncJobStore(client, settings.job_ttl_s),
            blobs=AsyncBlobStore(blob_root(settings), settings.job_ttl_s),
            collections=AsyncCollectionRegistry(client),
            media=MediaStore(settings.media_dir),
            celery=create_celery(settings),
            events=JobEvents(client, max_waiters=settings.max_long_polls),
            keys=key_store,
            authenticator=Authenticator(key_store, settings.bootstrap_admin_key),
            rate_limiter=RateLimiter(client, settings.redis_url),
            admission=Admission(client, settings),
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
        # /docs is served from the gateway's own copy of Swagger UI (routes/docs.py); ReDoc would need a CDN.
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    install_problem_handlers(app)
    install_dependency_handlers(app)
    install_body_limits(app, settings)
    install_metrics(app)
    install_http_headers(app, settings.cors_origins)
    for module in (searches, jobs, collections, keys, docs, webapp):
        app.include_router(module.router, responses=APP_RESPONSES)
    # The health routes never fail for Redis with APP_RESPONSES' 503: /healthz does not use it, /readyz says why.
    app.include_router(health.router, responses=SERVER_ERROR_RESPONSES)
    app.mount(webapp.STATIC_PATH, webapp.static_files, name="static")

    # /openapi.json is the contract (api_contract.py): problem answers instead of FastAPI's 422, typed job results.
    app.openapi = lambda: contract_document(app)  # type: ignore[method-assign]
    return app
