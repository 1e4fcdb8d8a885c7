"""Consumer heartbeats: each worker process announces, in Redis, the queue it consumes.

The gateway's /readyz reads these keys instead of broadcasting a Celery ping, which would cost a second
per probe and still miss a worker that is alive but not consuming.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

import redis
import redis.asyncio as aioredis

HEARTBEAT_PREFIX = "mmrag:consumer:"
HEARTBEAT_TTL_S = 15
HEARTBEAT_INTERVAL_S = 5.0


def heartbeat_key(queue: str, node: str) -> str:
    return f"{HEARTBEAT_PREFIX}{queue}:{node}"


class Heartbeat:
    def __init__(self, client: redis.Redis, queue: str, node: str) -> None:
        self._redis = client
        self._key = heartbeat_key(queue, node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{queue}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_INTERVAL_S)
        with contextlib.suppress(redis.RedisError):
            self._redis.delete(self._key)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Redis down: the key expires, readiness says so, and the next beat retries.
            with contextlib.suppress(redis.RedisError):
                self._redis.set(self._key, "1", ex=HEARTBEAT_TTL_S)
            self._stop.wait(HEARTBEAT_INTERVAL_S)


def start_heartbeat(redis_url: str, queue: str, worker: Any) -> Heartbeat:
    """Announce the Celery worker `worker` (the worker_ready sender) as a consumer of `queue`.

    The key carries the process id: two workers on one host share a Celery node name, but both consume.
    """
    node = getattr(worker, "hostname", None) or f"{queue}@{socket.gethostname()}"
    heartbeat = Heartbeat(redis.Redis.from_url(redis_url), queue, f"{node}.{os.getpid()}")
    heartbeat.start()
    return heartbeat


async def live_consumers(client: aioredis.Redis, queue: str) -> int:
    count = 0
    async for _ in client.scan_iter(match=f"{HEARTBEAT_PREFIX}{queue}:*", count=100):
        count += 1
    return count
