"""Workers killed in the middle of a job lose nothing and duplicate nothing; a stage that keeps killing its worker
ends its job instead of looping; work whose broker message was lost is sent again."""

from __future__ import annotations

import functools
import math
import os
import re
import signal
import time

import httpx
import pytest

from services.common.job_store import JobStore
from services.common.ownership import OWNED_PREFIX, WorkItem, WorkKind
from services.common.queues import TaskName
from tests.integration.conftest import CHUNK_SIZE, Stack, png_bytes, wait_for_job
from tests.support.processes import wait_until
from tests.support.tasks import messages_for

pytestmark = pytest.mark.integration


def _asked(vlm: httpx.Client, instruction: str) -> int:
    return sum(any(instruction in text for text in r["texts"]) for r in vlm.get("/control/requests").json())


def _asked_times(vlm: httpx.Client, instruction: str, times: int) -> bool:
    return _asked(vlm, instruction) == times


def _holds_an_unfinished_chunk(stack: Stack, job_id: str) -> bool:
    """Whether a worker process holds a chunk of `job_id` that the job record does not count as finished yet.

    Celery's log alone is not enough: a task may have recorded its chunk and not yet logged that it ended, and a
    worker killed then leaves recovery nothing to send again."""
    with stack.redis() as broker:
        finished = JobStore(broker, ttl_s=60).finished_chunks(job_id)
        for key in broker.scan_iter(match=f"{OWNED_PREFIX}*"):
            for raw in broker.smembers(key):
                item = WorkItem.parse(raw.decode())
                if item.kind is WorkKind.INDEX and item.job_id == job_id and item.chunk not in finished:
                    return True
    return False


def test_job_survives_a_sigkilled_reranker(stack: Stack, indexed: dict[str, bytes]) -> None:
    instruction = "same but red"
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        # The VLM hangs: the reranker is mid-job, waiting on it, when we kill it.
        vlm.post("/control/scenario", json={"name": "sleep", "sleep_s": 60})
    with stack.http() as http:
        job = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((90, 90, 250)), "image/png")},
            data={"instruction": instruction, "limit": "5"},
        ).json()
        with stack.vlm() as vlm:
            wait_until(lambda: _asked(vlm, instruction) == 1, 30, "the VLM request", services=stack.services.values())
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
    assert result["rerank"]["status"] == "applied"
    assert [c["vector_rank"] for c in result["candidates"]] == [5, 4, 3, 2, 1]
    assert len({c["id"] for c in result["candidates"]}) == 5, "no candidate may appear twice"
    # The redelivered task ran once more (one VLM call per delivery): no duplicate work after success.
    with stack.vlm() as vlm:
        assert _asked(vlm, instruction) == 2
    # Redelivery comes after the 30 s visibility timeout (+ up to 5 s to the next sweep); 90 s leaves room for a
    # loaded machine and for a worker start, and still fails a task that was never redelivered.
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
        stack.freeze_running("embedder", TaskName.INDEX.value, lambda: _holds_an_unfinished_chunk(stack, job["id"]))
        stack.services["embedder"].kill()
        killed_at = time.monotonic()
        embedder = stack.start_worker("embedder")
        final = wait_for_job(http, job["id"], timeout_s=150)
        recovered_s = time.monotonic() - killed_at
        collection = http.get("/v1/collections/crash").json()

    assert final["status"] == "succeeded", (final, stack.logs())
    assert final["progress"]["done"] == final["progress"]["total"] == len(images)
    result = final["result"]
    assert result["indexed"] + result["duplicates"] == len(images)
    assert collection["count"] == len(images), "every image indexed exactly once"
    assert "crash" not in {c["name"] for c in before}
    # The chunk that was running when the worker died was sent again once the dead process's lease lapsed (not
    # after the visibility timeout), and the new worker indexed it.
    held = re.findall(rf"held index:{job['id']}:(\d+): sent", stack.services["gateway"].log_text())
    assert held, stack.services["gateway"].log_tail()
    assert all(re.search(rf"\[job {job['id']}\] chunk {n}: \d+ indexed", embedder.log_text()) for n in held)
    # Lease (3 s here) + recovery period + the new worker's start: within SPEC's 60 s.
    assert recovered_s < 60


def test_a_stage_that_kills_its_worker_three_times_ends_the_job_saying_so(
    stack: Stack, indexed: dict[str, bytes]
) -> None:
    """As if the rerank stage ran out of memory every time: its pool processes die while it runs, three times."""
    instruction = "kills its worker"
    reranker = stack.services["reranker"]
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        vlm.post("/control/scenario", json={"name": "sleep", "sleep_s": 60})
        try:
            with stack.http() as http:
                job = http.post(
                    "/v1/searches",
                    files={"image": ("q.png", png_bytes((250, 90, 90)), "image/png")},
                    data={"instruction": instruction, "limit": "3"},
                ).json()
                for attempt in range(1, 4):
                    reached = functools.partial(_asked_times, vlm, instruction, attempt)
                    wait_until(reached, 60, f"rerank attempt {attempt}", services=[reranker])
                    for pid in stack.pool_children("reranker"):
                        os.kill(pid, signal.SIGKILL)
                final = wait_for_job(http, job["id"], timeout_s=60)
            asked = _asked(vlm, instruction)
        finally:
            vlm.post("/control/reset")

    assert final["status"] == "failed", (final, stack.logs())
    assert final["error"]["type"] == "internal"
    assert "started 4 times and its worker died each time" in final["error"]["detail"], final["error"]
    assert asked == 3, "the fourth start must end the job before it asks the VLM again"
    assert reranker.alive()
    wait_until(lambda: len(stack.pool_children("reranker")) == 4, 30, "the reranker's pool to be replaced")


def test_jobs_whose_messages_the_broker_lost_are_recovered(stack: Stack, indexed: dict[str, bytes]) -> None:
    """A worker killed between taking a message off the queue and recording it as unacknowledged loses it.

    The same state, made on purpose: with no embedder running, an index job and a search are queued, and their
    messages are deleted from the broker. The gateway sends their work again once they have been silent longer
    than the visibility timeout, and both finish, each image counted once.
    """
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
        with stack.redis() as broker:
            waiting = messages_for(broker, [index_job["id"], search_job["id"]])
            chunks = math.ceil(len(images) / CHUNK_SIZE)
            assert sum(map(len, waiting.values())) == chunks + 1, "the index chunks and the search should be waiting"
            for queue, messages in waiting.items():  # lost: no consumer will ever see these messages
                for message in messages:
                    broker.lrem(queue, 1, message)

        stack.start_worker("embedder")
        index_final = wait_for_job(http, index_job["id"], timeout_s=150)
        search_final = wait_for_job(http, search_job["id"], timeout_s=60)
        collection = http.get("/v1/collections/lost").json()

    assert index_final["status"] == "succeeded", (index_final, stack.logs())
    assert index_final["result"]["indexed"] == len(images)
    assert collection["count"] == len(images)
    assert search_final["status"] == "succeeded", (search_final, stack.logs())
    assert search_final["result"]["rerank"]["status"] == "applied"
    assert f"sent {chunks} task(s) again" in stack.services["gateway"].log_tail(200)
