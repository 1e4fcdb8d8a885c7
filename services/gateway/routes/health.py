"""Liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from services.common.broken_workers import broken_workers_async
from services.common.errors import ProblemType, problem
from services.common.heartbeat import live_consumers
from services.common.queues import Queue
from services.gateway.api_contract import problems
from services.gateway.problems import problem_response
from services.gateway.state import StateDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: 200 while the process serves")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses=problems(
        {
            503: "Not ready: Redis does not answer, or (?full=1) a queue has no live consumer; `missing` and "
            "`broken` say what (with `Retry-After`)"
        }
    ),
    summary="Readiness: this gateway can serve (Redis answers); ?full=1 also needs the workers",
)
async def readyz(
    state: StateDep,
    full: bool = Query(False, description="also require a live consumer on every queue, and name broken workers"),
) -> Any:
    # Plain readiness depends on this gateway only: during a rollout of the only embedder the gateway must keep
    # answering (GET /v1/jobs/{id}, new jobs that wait in the queue). The workers' state is `?full=1`.
    missing: list[str] = []
    consumers: dict[str, int] = {}
    broken: dict[str, str] = {}
    try:
        await state.redis.ping()
        if full:
            # Only workers that can serve consume (a broken one stops); those that gave up are named with the reason.
            broken = await broken_workers_async(state.redis)
            for queue in Queue:
                consumers[queue.value] = await live_consumers(state.redis, queue.value)
                if consumers[queue.value] == 0:
                    missing.append(f"no live consumer on queue {queue.value!r}")
    except redis.RedisError as error:
        # Open without a key: the error's text (host, port) goes to the log only.
        log.warning("readiness: Redis does not answer: %s", error)
        missing.append("Redis does not answer")
    if missing:
        detail = "; ".join(missing + [f"worker {node} stopped: {reason}" for node, reason in broken.items()])
        body = problem(ProblemType.UNAVAILABLE, detail, instance="/readyz", missing=missing, broken=broken)
        return problem_response(body, headers={"Retry-After": "5"})
    if not full:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "ready", "consumers": consumers, "broken": broken})
