"""Job counters in Redis: a job counts once when it ends, whatever writes after that; one gateway host reports them."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis

from services.common.job_metrics import METRICS_KEY
from services.common.job_store import AsyncJobStore, JobStore, new_job_id, new_record, timing_fields
from services.common.jobs import FailedItem, IndexParams, JobKind, JobStage, JobStatus, SearchParams, SearchQuery
from services.gateway.metrics import render


def counters(client: redis.Redis) -> dict[str, str]:
    raw: dict[bytes, bytes] = client.hgetall(METRICS_KEY)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def search_job(store: JobStore) -> str:
    job_id = new_job_id()
    params = SearchParams(collection="c", limit=3, rerank=False, query=SearchQuery(blob_id="b"))
    store.create(new_record(job_id, JobKind.SEARCH, params))
    return job_id


def succeed(store: JobStore, job_id: str, rerank: str = "skipped", **timings: float) -> None:
    result = {"collection": "c", "model": "m", "candidates": [], "rerank": {"status": rerank}}
    store.update(
        job_id,
        fields={
            "status": JobStatus.SUCCEEDED.value,
            "stage": JobStage.DONE.value,
            "result": json.dumps(result),
            "batch_size": "3",
            **timing_fields(**timings),
        },
    )


def test_a_job_ending_twice_counts_once(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, ttl_s=60)
    job_id = search_job(store)
    succeed(store, job_id, embed=20, total=120)
    # A redelivered task, or a second worker, finishing the same job again: refused, and not counted.
    succeed(store, job_id, embed=20, total=120)
    store.update(job_id, allowed=None, fields={"stage": "done"})  # any later write to an ended job
    values = counters(redis_client)
    assert values["jobs_submitted|search"] == "1"
    assert values["jobs_finished|search|succeeded"] == "1"
    assert values["rerank|skipped"] == "1"
    assert values["job_stage|search|embed|count"] == "1"
    assert values["job_stage|search|total|count"] == "1"
    assert float(values["job_stage|search|total|sum"]) == pytest.approx(0.12)
    assert values["search_batch_size||count"] == "1"
    # 0.12 s falls in the buckets from 0.25 s up (cumulative), not in those at or below 0.1 s.
    assert "job_stage|search|total|b5" not in values  # le=0.1
    assert values["job_stage|search|total|b6"] == "1"  # le=0.25
    assert "vlm_requests|ok" not in values  # the VLM was not asked


def test_a_job_failed_by_the_gateway_and_canceled_jobs_count_with_their_status(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    sync.flushdb()
    store = JobStore(sync, ttl_s=60)
    failed, canceled = search_job(store), search_job(store)

    async def end() -> None:
        client = aioredis.Redis.from_url(redis_url)
        jobs = AsyncJobStore(client, ttl_s=60)
        await jobs.fail(failed, {"type": "unavailable", "status": 503, "title": "t", "detail": "d"})
        await jobs.cancel(canceled)
        await jobs.cancel(canceled)
        await client.aclose()

    asyncio.run(end())
    succeed(store, failed)  # a late worker: refused
    values = counters(sync)
    assert values["jobs_finished|search|failed"] == "1"
    assert values["jobs_finished|search|canceled"] == "1"
    assert "jobs_finished|search|succeeded" not in values
    # Without a total timing, the total stage is measured from the job's creation.
    assert values["job_stage|search|total|count"] == "2"
    sync.close()


def test_an_index_job_counts_its_images_by_outcome(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, ttl_s=60)
    job_id = new_job_id()
    store.create(new_record(job_id, JobKind.INDEX, IndexParams(collection="c", chunks=1), total=6, chunks=1))
    failed = [FailedItem(filename="a.png", reason="bad"), FailedItem(filename="b.png", reason="bad")]
    increments = {"count.indexed": 3, "count.duplicates": 1, "work_ms.index": 700}
    store.complete_chunk(job_id, 0, increments=increments, failed=failed)
    store.complete_chunk(job_id, 0, increments=increments, failed=failed)  # delivered again: refused
    store.update(job_id, fields={"status": JobStatus.SUCCEEDED.value, "stage": JobStage.DONE.value})
    values = counters(redis_client)
    assert values["index_images|indexed"] == "3"
    assert values["index_images|duplicate"] == "1"
    assert values["index_images|failed"] == "2"
    assert values["jobs_finished|index|succeeded"] == "1"
    assert values["job_stage|index|index|count"] == "1"
    assert float(values["job_stage|index|index|sum"]) == pytest.approx(0.7)


def test_a_vlm_call_counts_by_outcome(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, ttl_s=60)
    succeed(store, search_job(store), rerank="applied", vlm=900, total=1000)
    succeed(store, search_job(store), rerank="failed", vlm=3000, total=3100)
    succeed(store, search_job(store), rerank="applied", vlm=0, total=50)  # a cached ranking: no VLM call
    values = counters(redis_client)
    assert (values["vlm_requests|ok"], values["vlm_requests|failed"]) == ("1", "1")
    assert values["vlm||count"] == "2"
    assert values["rerank|applied"] == "2"


def test_only_one_gateway_host_reports_the_shared_families(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    redis.Redis.from_url(redis_url).flushdb()

    async def scrape(reporter: str) -> str:
        monkeypatch.setenv("MMRAG_METRICS_REPORTER_ID", reporter)
        client = aioredis.Redis.from_url(redis_url)
        try:
            return (await render(client)).decode()
        finally:
            await client.aclose()

    first, second, first_again = (asyncio.run(scrape(r)) for r in ("gw-a", "gw-b", "gw-a"))
    assert "mmrag_metrics_reporter 1.0" in first and "mmrag_queue_length{" in first
    assert "mmrag_metrics_reporter 0.0" in second and "mmrag_queue_length{" not in second
    assert "mmrag_jobs_finished" not in second  # not even an empty family
    assert "mmrag_metrics_reporter 1.0" in first_again
    # The HTTP families are every replica's own: both expose them.
    assert "# TYPE mmrag_http_requests_total counter" in second
