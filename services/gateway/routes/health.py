"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.common.errors import ProblemType, problem
from services.common.heartbeat import live_consumers
from services.common.queues import Queue
from services.gateway.problems import problem_response
from services.gateway.state import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: 200 while the process serves")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: Redis answers and every queue has a live consumer")
async def readyz(state: StateDep) -> Any:
    missing: list[str] = []
    consumers: dict[str, int] = {}
    try:
        await state.redis.ping()
        for queue in Queue:
            consumers[queue.value] = await live_consumers(state.redis, queue.value)
            if consumers[queue.value] == 0:
                missing.append(f"no live consumer on queue {queue.value!r}")
    except redis.RedisError as error:
        missing.append(f"Redis does not answer ({error})")
    if missing:
        body = problem(ProblemType.UNAVAILABLE, "; ".join(missing), instance="/readyz", missing=missing)
        return problem_response(body, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "consumers": consumers})
