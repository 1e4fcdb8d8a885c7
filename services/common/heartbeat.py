"""Keys that say a process is alive: consumer heartbeats and work leases.

A daemon thread renews each key well within its TTL; when the process dies, the keys expire. Two uses:
- consumer heartbeats (`mmrag:consumer:<queue>:<node>.<pid>`): each worker's main process announces the queues it
  consumes. The gateway's /readyz counts them instead of broadcasting a Celery ping, which would cost a second per
  probe and still miss a worker that is alive but not consuming.
- work leases (`mmrag:lease:<host>.<pid>`): each process that runs tasks owns the job stages it claimed for as long
  as its lease lives. When it lapses, recovery sends the work again (gateway/recovery.py).
A consumer heartbeat also touches a local file on each beat, Redis or not: the worker's liveness probe
(worker_probe.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from services.common.worker_probe import mark_alive

HEARTBEAT_PREFIX = "mmrag:consumer:"
HEARTBEAT_TTL_S = 15
HEARTBEAT_INTERVAL_S = 5.0
LEASE_PREFIX = "mmrag:lease:"


def heartbeat_key(queue: str, node: str) -> str:
    return f"{HEARTBEAT_PREFIX}{queue}:{node}"


def lease_key(owner: str) -> str:
    return f"{LEASE_PREFIX}{owner}"


def process_owner() -> str:
    """This process as an owner of work: unique across hosts (containers have their own hostnames) and restarts."""
    return f"{socket.gethostname()}.{os.getpid()}"


class Heartbeat:
    """Keeps `keys` alive in Redis, renewed every `interval_s`, expiring `ttl_s` after the last renewal."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Sequence[str],
        *,
        ttl_s: float,
        interval_s: float,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._redis = client
        self._on_beat = on_beat
        self._keys = list(keys)
        self._ttl_ms = int(ttl_s * 1000)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()  # alive from the first moment, not one interval later
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s)
        with contextlib.suppress(redis.RedisError):
            self._redis.delete(*self._keys)

    def _beat(self) -> None:
        if self._on_beat is not None:
            # First, and whatever Redis does: a local sign of life that a Redis outage does not stop.
            self._on_beat()
        # Redis down: the keys expire, readiness and recovery see it, and the next beat retries.
        with contextlib.suppress(redis.RedisError), self._redis.pipeline(transaction=False) as pipe:
            for key in self._keys:
                pipe.set(key, "1", px=self._ttl_ms)
            pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._beat()


def start_heartbeat(redis_url: str, queues: Sequence[str], worker: Any) -> Heartbeat:
    """Announce the Celery worker `worker` (the worker_ready sender) as a consumer of `queues`.

    The key carries the process id: two workers on one host share a Celery node name, but both consume.
    """
    node = getattr(worker, "hostname", None) or f"worker@{socket.gethostname()}"
    keys = [heartbeat_key(queue, f"{node}.{os.getpid()}") for queue in queues]
    # Timeouts, so that a Redis that stops answering cannot hold up the local liveness mark of the next beat.
    client = redis.Redis.from_url(
        redis_url, socket_timeout=HEARTBEAT_INTERVAL_S, socket_connect_timeout=HEARTBEAT_INTERVAL_S
    )
    return Heartbeat(
        client, keys, ttl_s=HEARTBEAT_TTL_S, interval_s=HEARTBEAT_INTERVAL_S, on_beat=lambda: mark_alive(node)
    ).start()


def start_lease(client: redis.Redis, owner: str, ttl_s: float) -> Heartbeat:
    """Hold this process's work lease for as long as it lives (renewed three times per TTL)."""
    return Heartbeat(client, [lease_key(owner)], ttl_s=ttl_s, interval_s=ttl_s / 3).start()


def consumed_queues(worker: Any) -> list[str]:
    """The queues a Celery worker (the worker_ready sender) consumes, as `--queues` selected them."""
    return list(worker.app.amqp.queues.consume_from)


async def live_consumers(client: aioredis.Redis, queue: str) -> int:
    count = 0
    async for _ in client.scan_iter(match=f"{HEARTBEAT_PREFIX}{queue}:*", count=100):
        count += 1
    return count
