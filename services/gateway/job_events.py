"""Long-polls that scale: one pub/sub subscription per gateway process, fanned out to every waiting request.

The job store publishes on a job's channel at every change. A subscription per long-poll would cost a Redis
connection and two commands per `GET /v1/jobs/{id}?wait=`; instead one pattern subscription receives every job's
changes and wakes the requests waiting on that job. If the subscription drops (Redis restarting), it reconnects
and wakes every waiter so each reads its job again; waiters also re-read every few seconds regardless, so a lost
message costs at most that long, never the whole wait.

Waiters never crowd out other requests:
- their number per process is capped (MMRAG_MAX_LONG_POLLS); past it a long-poll gets 429 with Retry-After, while
  a plain poll (no `wait`) is always served;
- their job reads share a few of the Redis pool's connections (MAX_CONCURRENT_READS). Waiters whose waits end
  together, or that one change or a reconnection wakes together, would otherwise each take a pooled connection at
  the same moment, and a pool that is full refuses every other request of the process ("Too many connections").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import RateLimited
from services.common.job_store import CHANNEL_PREFIX, AsyncJobStore
from services.common.jobs import Job

log = logging.getLogger(__name__)
RECONNECT_DELAY_S = 1.0
REREAD_EVERY_S = 5.0
STOP_TIMEOUT_S = 2.0
# Job reads by waiters in flight at once, out of the gateway's pool of 256: a burst of 1,000 woken waiters is
# read in about 30 rounds of one Redis round trip each (well under a second), and leaves the pool to the rest.
MAX_CONCURRENT_READS = 16
# What a long-poll refused at the cap is told: waits end within seconds as jobs change or time out.
FULL_RETRY_AFTER_S = 1.0


class JobEvents:
    def __init__(self, client: aioredis.Redis, *, max_waiters: int = 1000) -> None:
        self._redis = client
        self._max_waiters = max_waiters
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._count = 0
        self._reads = asyncio.Semaphore(MAX_CONCURRENT_READS)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="job-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded, and without waiting on the cancellation itself: a subscription caught mid-connect must not
            # hold up the gateway's shutdown.
            await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if not self._task.done():
                log.warning("the job events subscription did not stop within %.0f s", STOP_TIMEOUT_S)

    @property
    def waiting(self) -> int:
        """Requests waiting on a job now."""
        return self._count

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set at each change of `job_id` while the block runs; RateLimited when the process already
        holds its maximum of waiters."""
        if self._count >= self._max_waiters:
            raise RateLimited(
                f"this gateway process is already holding {self._max_waiters} long-polls (MMRAG_MAX_LONG_POLLS): "
                "retry after the Retry-After seconds, or poll without `wait`",
                retry_after_s=FULL_RETRY_AFTER_S,
            )
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        self._count += 1
        try:
            yield event
        finally:
            self._count -= 1
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    async def _read(self, jobs: AsyncJobStore, job_id: str) -> Job:
        async with self._reads:
            return await jobs.get(job_id)

    async def wait_for_change(
        self, jobs: AsyncJobStore, job_id: str, timeout_s: float, *, since: datetime | None = None
    ) -> Job:
        """The job once it has changed (or is finished), or as it is after `timeout_s`. A change means an
        `updated_at` other than `since`, the one the client last saw, or else than the job's when the call began."""
        if timeout_s <= 0:
            return await jobs.get(job_id)
        deadline = time.monotonic() + timeout_s
        with self.watch(job_id) as changed:
            # Registered before the first read: a change right after it still sets the event.
            current = await self._read(jobs, job_id)
            seen = since or current.updated_at
            while current.updated_at == seen and not current.status.is_terminal:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, REREAD_EVERY_S))
                changed.clear()
                current = await self._read(jobs, job_id)
            return current

    def _wake(self, job_id: str | None = None) -> None:
        targets = self._waiters.values() if job_id is None else [self._waiters.get(job_id, set())]
        for events in targets:
            for event in events:
                event.set()

    async def _listen(self) -> None:
        pattern = f"{CHANNEL_PREFIX}*"
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.psubscribe(pattern)
                    self._wake()  # changes while we were not subscribed were missed: everyone reads again
                    async for message in pubsub.listen():
                        if message["type"] == "pmessage":
                            channel = message["channel"]
                            name = channel.decode() if isinstance(channel, bytes) else str(channel)
                            self._wake(name.removeprefix(CHANNEL_PREFIX))
            except (RedisError, OSError) as error:
                log.warning("job events subscription lost (%s); reconnecting in %.0f s", error, RECONNECT_DELAY_S)
                self._wake()
                await asyncio.sleep(RECONNECT_DELAY_S)
