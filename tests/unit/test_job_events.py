"""Long-polls through the gateway's one shared subscription: woken by a change, bounded by the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis
import redis.asyncio as aioredis

from services.common.errors import RateLimited
from services.common.job_store import AsyncJobStore, JobStore, new_job_id, new_record
from services.common.jobs import IndexParams, Job, JobKind, JobStatus
from services.gateway.job_events import MAX_CONCURRENT_READS, JobEvents


def _create(store: JobStore) -> str:
    job_id = new_job_id()
    store.create(new_record(job_id, JobKind.INDEX, IndexParams(collection="c", chunks=1), total=1, chunks=1))
    return job_id


@contextlib.asynccontextmanager
async def _events(redis_url: str, **options: int) -> AsyncIterator[tuple[JobEvents, AsyncJobStore]]:
    """A started JobEvents and a job store on one client of its own, both closed afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    events = JobEvents(client, **options)
    events.start()
    try:
        yield events, AsyncJobStore(client, 600)
    finally:
        await events.stop()
        await client.aclose()


async def _waiting(
    redis_url: str, job_ids: list[str], timeout_s: float, during: float, change: Callable[[], None]
) -> list[Job]:
    """Long-poll every job of `job_ids` at once on one JobEvents; `change()` runs after `during` seconds."""
    async with _events(redis_url) as (events, jobs):
        await asyncio.sleep(0.2)  # subscribed
        asyncio.get_running_loop().call_later(during, change)
        results = await asyncio.gather(*(events.wait_for_change(jobs, job_id, timeout_s) for job_id in job_ids))
        assert events.waiting == 0, "every waiter unregisters when its request ends"
        return list(results)


def test_a_change_wakes_only_the_requests_waiting_on_that_job(redis_url: str, redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    changed, untouched = _create(store), _create(store)
    connections_before = int(redis_client.info("clients")["connected_clients"])

    def change() -> None:
        store.update(changed, fields={"status": "running", "stage": "indexing"})

    started = time.monotonic()
    results = asyncio.run(_waiting(redis_url, [changed] * 50 + [untouched], 1.5, 0.2, change))
    waited = time.monotonic() - started
    assert all(job.status is JobStatus.RUNNING for job in results[:50])
    assert results[50].status is JobStatus.QUEUED  # returned at its timeout, unchanged
    assert 1.4 < waited < 5  # the untouched job's wait ran to its timeout, not beyond
    # 51 waiters shared one subscription: the pool opened a handful of connections, not one per waiter.
    assert int(redis_client.info("clients")["connected_clients"]) - connections_before < 10


def test_a_finished_job_is_returned_at_once(redis_url: str, redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    job_id = _create(store)
    store.update(job_id, fields={"status": "succeeded", "stage": "done"})

    async def scenario() -> tuple[float, Job]:
        async with _events(redis_url) as (events, jobs):
            await asyncio.sleep(0.2)  # subscribed, as in a gateway that has been up a moment
            started = time.monotonic()
            job = await events.wait_for_change(jobs, job_id, 20)
            return time.monotonic() - started, job

    waited, job = asyncio.run(scenario())
    assert job.status is JobStatus.SUCCEEDED
    assert waited < 2  # not the 20 s timeout


async def _subscribed(client: redis.Redis) -> None:
    """Until the events' pattern subscription is in place: a change published before it would wake nobody."""
    while client.pubsub_numpat() < 1:
        await asyncio.sleep(0.01)


def test_waiters_past_the_cap_are_refused_until_one_ends(redis_url: str, redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    job_id = _create(store)

    async def scenario() -> None:
        async with _events(redis_url, max_waiters=3) as (events, jobs):
            await _subscribed(redis_client)
            held = [asyncio.create_task(events.wait_for_change(jobs, job_id, 20)) for _ in range(3)]
            while events.waiting < 3:
                await asyncio.sleep(0.01)
            with pytest.raises(RateLimited, match="MMRAG_MAX_LONG_POLLS") as refused:
                await events.wait_for_change(jobs, job_id, 20)
            assert refused.value.status == 429 and refused.value.retry_after_s is not None
            assert (await events.wait_for_change(jobs, job_id, 0)).id == job_id  # a plain read is never refused
            store.update(job_id, fields={"status": "running", "stage": "indexing"})
            await asyncio.gather(*held)
            assert events.waiting == 0
            assert (await events.wait_for_change(jobs, job_id, 0.1)).status is JobStatus.RUNNING  # room again

    asyncio.run(scenario())


def test_waiters_woken_together_share_a_few_connections(redis_url: str, redis_client: redis.Redis) -> None:
    """300 waiters woken by one change read their job through at most MAX_CONCURRENT_READS pooled connections,
    not one each (which would exhaust the gateway's pool for every other request)."""
    store = JobStore(redis_client, 600)
    job_id = _create(store)
    connections_before = int(redis_client.info("clients")["connected_clients"])

    async def scenario() -> int:
        async with _events(redis_url) as (events, jobs):
            await _subscribed(redis_client)
            waits = [asyncio.create_task(events.wait_for_change(jobs, job_id, 20)) for _ in range(300)]
            while events.waiting < 300:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # every first read done
            store.update(job_id, fields={"status": "running", "stage": "indexing"})
            results = await asyncio.gather(*waits)
            assert all(job.status is JobStatus.RUNNING for job in results)
            # The pool keeps every connection it opened until it is closed: this counts all the reads needed.
            return int(redis_client.info("clients")["connected_clients"]) - connections_before

    # One more for the subscription.
    assert asyncio.run(scenario()) <= MAX_CONCURRENT_READS + 1
