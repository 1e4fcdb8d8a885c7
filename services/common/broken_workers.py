"""Workers that cannot serve say so, and stop taking work.

An embedder whose model cannot be loaded (missing weights, CUDA out of memory, a bad checkpoint) would otherwise
stay a consumer and fail every job it receives, while its health check and /readyz said all was well. Instead it
records why in Redis and shuts down before running anything: the messages it may have reserved go back to the
queue, its health check fails, and compose or Kubernetes restart it with backoff. Jobs wait in the queue for a
worker that can serve; the gateway fails them with `unavailable` only when none appears within their time
limit (gateway/recovery.py). /readyz and `mmrag health worker` name the broken workers and their reasons.
"""

from __future__ import annotations

import json
import time

import redis
import redis.asyncio as aioredis

BROKEN_PREFIX = "mmrag:broken:"
# How long a failure is reported after the worker gave up: long enough to be seen, short enough to go stale.
BROKEN_REPORT_TTL_S = 600


def report_broken(client: redis.Redis, node: str, reason: str) -> None:
    client.set(f"{BROKEN_PREFIX}{node}", json.dumps({"reason": reason, "at": time.time()}), ex=BROKEN_REPORT_TTL_S)


def _decode(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def broken_workers(client: redis.Redis, prefix: str = "") -> dict[str, str]:
    """Worker node → why it stopped, for the workers whose node name starts with `prefix`."""
    found: dict[str, str] = {}
    for key in client.scan_iter(match=f"{BROKEN_PREFIX}{prefix}*", count=100):
        raw = client.get(key)
        if raw is not None:
            found[_decode(key).removeprefix(BROKEN_PREFIX)] = json.loads(raw)["reason"]
    return found


async def broken_workers_async(client: aioredis.Redis) -> dict[str, str]:
    found: dict[str, str] = {}
    async for key in client.scan_iter(match=f"{BROKEN_PREFIX}*", count=100):
        raw = await client.get(key)
        if raw is not None:
            found[_decode(key).removeprefix(BROKEN_PREFIX)] = json.loads(raw)["reason"]
    return found
