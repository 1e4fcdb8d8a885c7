from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis

from services.common.errors import NotFound
from services.common.job_store import AsyncJobStore, JobStore, UpdateResult, new_job_id, new_record, timing_fields
from services.common.jobs import FailedItem, IndexParams, JobKind, JobStage, JobStatus


def _store(client: redis.Redis) -> JobStore:
    return JobStore(client, ttl_s=600)


def _create(store: JobStore, chunks: int = 0, total: int = 0) -> str:
    job_id = new_job_id()
    store.create(
        new_record(job_id, JobKind.INDEX, IndexParams(collection="c", chunks=chunks), total=total, chunks=chunks)
    )
    return job_id


def test_a_new_job_is_queued_with_a_ttl(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job_id = _create(store)
    job = store.get(job_id)
    assert (job.status, job.stage, job.kind) == (JobStatus.QUEUED, JobStage.QUEUED, JobKind.INDEX)
    assert 0 < redis_client.ttl(f"mmrag:job:{job_id}") <= 600


def test_unknown_jobs_are_not_found(redis_client: redis.Redis) -> None:
    with pytest.raises(NotFound):
        _store(redis_client).get("0" * 32)
    assert _store(redis_client).update("0" * 32, fields={"stage": "done"}) is UpdateResult.MISSING


def test_a_canceled_job_is_never_overwritten_by_a_late_task(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job_id = _create(store)
    asyncio.run(AsyncJobStore(aioredis.Redis.from_url(_url(redis_client)), 600).cancel(job_id))
    late = store.update(job_id, fields={"status": JobStatus.SUCCEEDED.value, "stage": JobStage.DONE.value})
    assert late is UpdateResult.REFUSED
    assert store.get(job_id).status is JobStatus.CANCELED


def test_updates_stamp_time_and_timings(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job_id = _create(store)
    before = store.get(job_id).updated_at
    time.sleep(0.005)
    store.update(job_id, fields={"status": "running", "stage": "embedding", **timing_fields(queue=1.5)})
    job = store.get(job_id)
    assert job.updated_at > before
    assert job.timings_ms.queue == pytest.approx(1.5)


def test_each_chunk_counts_once_and_the_last_one_is_reported(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job_id = _create(store, chunks=2, total=4)
    failed = [FailedItem(filename="x.jpg", reason="corrupt")]
    assert store.complete_chunk(job_id, 0, increments={"progress_done": 2}, failed=failed) is UpdateResult.APPLIED
    # A redelivered chunk changes nothing.
    assert store.complete_chunk(job_id, 0, increments={"progress_done": 2}) is UpdateResult.REFUSED
    assert store.complete_chunk(job_id, 1, increments={"progress_done": 2}) is UpdateResult.LAST_CHUNK
    job = store.get(job_id)
    assert job.progress.done == 4 and job.progress.total == 4
    assert [f.filename for f in job.progress.failed] == ["x.jpg"]


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def _silent_jobs(redis_client: redis.Redis, silent_for_s: float) -> list[str]:
    async def scenario() -> list[str]:
        client = aioredis.Redis.from_url(_url(redis_client))
        try:
            return await AsyncJobStore(client, 600).silent_jobs(silent_for_s)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_active_jobs_are_tracked_by_their_last_change_and_ended_ones_dropped(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    quiet, busy, ended = _create(store), _create(store), _create(store)
    time.sleep(0.3)
    store.update(busy, fields={"status": "running", "stage": "indexing"})
    store.update(ended, fields={"status": "succeeded", "stage": "done"})
    assert _silent_jobs(redis_client, 0.2) == [quiet]
    assert set(_silent_jobs(redis_client, 0)) == {quiet, busy}
    assert redis_client.zscore("mmrag:jobs:active", ended) is None


def test_a_finished_chunk_and_an_expired_record_update_the_active_set(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job_id = _create(store, chunks=2, total=4)
    before = redis_client.zscore("mmrag:jobs:active", job_id)
    time.sleep(0.05)
    store.complete_chunk(job_id, 0, increments={"progress_done": 2})
    assert redis_client.zscore("mmrag:jobs:active", job_id) > before  # type: ignore[operator]
    redis_client.delete(f"mmrag:job:{job_id}")
    assert store.update(job_id, fields={"stage": "indexing"}) is UpdateResult.MISSING
    assert redis_client.zscore("mmrag:jobs:active", job_id) is None


def test_chunk_items_are_kept_with_the_job_until_it_ends(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job_id = new_job_id()
    chunks = [
        [{"id": "a" * 64, "filename": "a.png", "ext": "png"}],
        [{"id": "b" * 64, "filename": "b.png", "ext": "png"}],
    ]
    store.create(new_record(job_id, JobKind.INDEX, IndexParams(collection="c", chunks=2), total=2, chunks=2), chunks)
    assert store.chunk_items(job_id, 1) == chunks[1]
    assert 0 < redis_client.ttl(f"mmrag:job:{job_id}:chunk-items") <= 600
    store.complete_chunk(job_id, 1, increments={"progress_done": 1})
    assert store.chunk_done(job_id, 1) and not store.chunk_done(job_id, 0)
    assert store.finished_chunks(job_id) == {1}
    store.forget_chunk_items(job_id)
    with pytest.raises(NotFound):
        store.chunk_items(job_id, 0)
