"""Dynamic batching of searches and their priority over bulk indexing, on the real stack.

Searches that wait together run as one batch; a search submitted during an index job does not wait for it;
a batch whose worker is SIGKILLed is taken over by a replacement and every job of it ends once.
"""

from __future__ import annotations

import io
import os
import signal
import time

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from tests.integration.conftest import Stack, paused, png_bytes, wait_for_job
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


def _submit(http: httpx.Client, image: bytes, *, rerank: bool, instruction: str = "the same, in blue") -> str:
    response = http.post(
        "/v1/searches",
        files={"image": ("q.png", image, "image/png")},
        data={"instruction": instruction, "limit": "4", "rerank": str(rerank).lower()},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_searches_waiting_together_run_as_one_batch(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.http() as http:
        with paused(stack):
            job_ids = [_submit(http, png_bytes((i * 20, 90, 200 - i * 9), pattern=i), rerank=False) for i in range(10)]
        jobs = [wait_for_job(http, job_id, timeout_s=60) for job_id in job_ids]

    assert all(job["status"] == "succeeded" for job in jobs), (jobs, stack.logs())
    # The first message's task claimed its own job and the nine waiting with it: one forward pass for all ten.
    assert [job["result"]["batch_size"] for job in jobs] == [10] * 10  # type: ignore[index]
    for job in jobs:
        timings = job["timings_ms"]
        assert isinstance(timings, dict)
        assert all(timings[k] is not None and timings[k] >= 0 for k in ("queue", "embed", "search", "total"))
        assert len(job["result"]["candidates"]) == 4  # type: ignore[index]
    # Each job's own candidates: different queries, different nearest images.
    assert len({tuple(c["id"] for c in job["result"]["candidates"]) for job in jobs}) > 1  # type: ignore[index]


def test_a_search_during_an_index_job_does_not_wait_for_it(stack: Stack, indexed: dict[str, bytes]) -> None:
    images = [(f"bulk_{i:04d}.png", png_bytes((i % 256, (i * 7) % 256, 128), pattern=i % 9)) for i in range(480)]
    with stack.http() as http:
        bulk = http.post(
            "/v1/collections/bulk/images", files=[("files", (n, d, "image/png")) for n, d in images]
        ).json()

        def indexing() -> bool:
            current = http.get(f"/v1/jobs/{bulk['id']}").json()
            return current["stage"] == "indexing" and current["progress"]["done"] > 0

        wait_until(indexing, 60, "the index job to start", interval_s=0.05)
        search = wait_for_job(http, _submit(http, png_bytes((10, 200, 10)), rerank=False), timeout_s=60)
        index_then = http.get(f"/v1/jobs/{bulk['id']}").json()
        final = wait_for_job(http, bulk["id"], timeout_s=240)

    assert search["status"] == "succeeded", (search, stack.logs())
    # The index job's fifteen chunks were still being worked through when the search ended.
    assert index_then["status"] == "running", index_then
    assert index_then["progress"]["done"] < len(images)
    assert final["status"] == "succeeded" and final["result"]["indexed"] == len(images), final


def _large_query(seed: int) -> bytes:
    # Noise at 1400x1400 decodes slowly enough (tens of ms each) for the test to catch the batch in flight.
    pixels = np.random.default_rng(seed).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_a_batch_whose_worker_is_killed_is_taken_over_and_each_job_ends_once(
    stack: Stack, indexed: dict[str, bytes]
) -> None:
    broker = redis.Redis.from_url(stack.redis_url)
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        vlm.post("/control/scenario", json={"name": "json"})
    queries = [_large_query(seed) for seed in range(8)]
    group = stack.services["embedder"].pid
    with stack.http() as http:
        with paused(stack):
            job_ids = [_submit(http, query, rerank=True) for query in queries]

        def claimed() -> bool:
            owners = [broker.hget(f"mmrag:job:{job_id}", "owner") for job_id in job_ids]
            return all(owner is not None for owner in owners)

        # Released, the embedder claims all eight in one batch; freeze it the moment it has.
        wait_until(claimed, 30, "the batch to be claimed", interval_s=0.002)
        os.killpg(group, signal.SIGSTOP)
        in_flight = [
            job_id for job_id in job_ids if broker.hget(f"mmrag:job:{job_id}", "stage") in (b"embedding", b"searching")
        ]
        assert in_flight, "the batch had already finished: the kill would prove nothing"
        stack.services["embedder"].kill()
        killed_at = time.monotonic()
        stack.start_worker("embedder")
        jobs = [wait_for_job(http, job_id, timeout_s=90) for job_id in job_ids]
        recovered_s = time.monotonic() - killed_at

    assert all(job["status"] == "succeeded" for job in jobs), (jobs, stack.logs())
    assert all(job["result"]["rerank"]["status"] == "applied" for job in jobs)  # type: ignore[index]
    # Exactly once: each job was reranked once (one VLM call each), however its batch was split and redone.
    with stack.vlm() as vlm:
        assert len(vlm.get("/control/requests").json()) == len(job_ids)
    # Taken over by liveness (3 s lease in these tests) and a new embedder's start, not the visibility timeout.
    assert recovered_s < 60
    assert "lease lapsed" in stack.services["gateway"].log_tail(400)
