"""A worker killed with SIGKILL in the middle of a job does not lose it, and does not duplicate its result."""

from __future__ import annotations

import time

import httpx
import redis

from services.common.queues import Queue
from tests.integration.conftest import Stack, png_bytes, wait_for_job
from tests.support.processes import wait_until


def test_job_survives_a_sigkilled_reranker(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        # The VLM hangs: the reranker is mid-job, waiting on it, when we kill it.
        vlm.post("/control/scenario", json={"name": "sleep", "sleep_s": 60})
    with stack.http() as http:
        job = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((90, 90, 250)), "image/png")},
            data={"instruction": "same but red", "limit": "5"},
        ).json()
        with stack.vlm() as vlm:
            wait_until(lambda: len(vlm.get("/control/requests").json()) == 1, 30, "the VLM request")
        assert http.get(f"/v1/jobs/{job['id']}").json()["stage"] == "reranking"

        stack.services["reranker"].kill()
        with stack.vlm() as vlm:
            vlm.post("/control/scenario", json={"name": "json"})
        killed_at = time.monotonic()
        stack.start_worker("reranker")

        final = wait_for_job(http, job["id"], timeout_s=120)
        recovered_s = time.monotonic() - killed_at

    assert final["status"] == "succeeded", (final, stack.logs())
    result = final["result"]
    assert isinstance(result, dict)
    assert result["rerank"]["status"] == "applied"
    assert [c["vector_rank"] for c in result["candidates"]] == [5, 4, 3, 2, 1]
    assert len({c["id"] for c in result["candidates"]}) == 5, "no candidate may appear twice"
    # The redelivered task ran once more (one VLM call per delivery): no duplicate work after success.
    with stack.vlm() as vlm:
        assert len(vlm.get("/control/requests").json()) == 2
    assert recovered_s < 90
    assert httpx.get(f"{stack.gateway_url}/readyz?full=1").status_code == 200


def test_index_job_survives_a_sigkilled_embedder(stack: Stack, indexed: dict[str, bytes]) -> None:
    """Kill the embedder while it indexes a chunk; a new one finishes the job, each image counted once."""
    images = [(f"crash_{i:03d}.png", png_bytes((i, 255 - i, (i * 7) % 256), pattern=i % 3)) for i in range(160)]
    with stack.http() as http:
        before = http.get("/v1/collections").json()
        job = http.post(
            "/v1/collections/crash/images", files=[("files", (n, d, "image/png")) for n, d in images]
        ).json()

        def mid_job() -> bool:
            current = http.get(f"/v1/jobs/{job['id']}").json()
            return current["stage"] == "indexing" and 0 < current["progress"]["done"] < len(images)

        wait_until(mid_job, 60, "the index job to be part-way", interval_s=0.02)
        stack.services["embedder"].kill()
        stack.start_worker("embedder")
        final = wait_for_job(http, job["id"], timeout_s=150)
        collection = http.get("/v1/collections/crash").json()

    assert final["status"] == "succeeded", (final, stack.logs())
    assert final["progress"]["done"] == final["progress"]["total"] == len(images)  # type: ignore[index]
    result = final["result"]
    assert isinstance(result, dict)
    assert result["indexed"] + result["duplicates"] == len(images)
    assert collection["count"] == len(images), "every image indexed exactly once"
    assert "crash" not in {c["name"] for c in before}


def test_jobs_whose_messages_the_broker_lost_are_recovered(stack: Stack, indexed: dict[str, bytes]) -> None:
    """A worker killed between taking a message off the queue and recording it as unacknowledged loses it.

    The same state, made on purpose: with no embedder running, an index job and a search are queued, and their
    messages are deleted from the broker. The gateway sends their work again once they have been silent longer
    than the visibility timeout, and both finish, each image counted once.
    """
    broker = redis.Redis.from_url(stack.redis_url)
    stack.services["embedder"].kill()
    images = [(f"lost_{i:03d}.png", png_bytes((i * 3, 100, 255 - i * 3), pattern=i % 4)) for i in range(40)]
    with stack.http() as http:
        index_job = http.post(
            "/v1/collections/lost/images", files=[("files", (n, d, "image/png")) for n, d in images]
        ).json()
        search_job = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((5, 250, 5), pattern=1), "image/png")},
            data={"instruction": "lost and found", "limit": "3"},
        ).json()
        assert broker.llen(Queue.INDEX.value) == 2, "two index chunks should be waiting in their queue"
        assert broker.llen(Queue.SEARCH.value) == 1, "one search should be waiting in its queue"
        broker.delete(Queue.INDEX.value, Queue.SEARCH.value)  # lost: no consumer will ever see these messages

        stack.start_worker("embedder")
        index_final = wait_for_job(http, index_job["id"], timeout_s=150)
        search_final = wait_for_job(http, search_job["id"], timeout_s=60)
        collection = http.get("/v1/collections/lost").json()

    assert index_final["status"] == "succeeded", (index_final, stack.logs())
    assert index_final["result"]["indexed"] == len(images)  # type: ignore[index]
    assert collection["count"] == len(images)
    assert search_final["status"] == "succeeded", (search_final, stack.logs())
    assert search_final["result"]["rerank"]["status"] == "applied"  # type: ignore[index]
    assert "sent 2 task(s) again" in stack.services["gateway"].log_tail(200)
