"""GET /metrics after a known workload counts exactly, and a task delivered again counts nothing more."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from services.common.queues import TASK_QUEUES, TaskName
from tests.integration.conftest import Stack, gallery, png_bytes, running_stack, wait_for_job

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: its counters start at zero."""
    log_dir: Path = tmp_path_factory.mktemp("metrics-stack")
    with running_stack(log_dir, {"embedder": "embedder", "reranker": "reranker"}) as stack:
        yield stack


def scrape(stack: Stack) -> tuple[str, Samples]:
    with stack.http() as http:
        response = http.get("/metrics")
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_a_known_workload_exactly(fresh_stack: Stack) -> None:
    stack = fresh_stack
    images = gallery(6)
    job_ids: list[str] = []
    with stack.http() as http:
        response = http.post(
            "/v1/collections/default/images",
            files=[("files", (name, data, "image/png")) for name, data in images]
            + [("files", ("broken.png", b"not an image at all", "image/png"))],
        )
        assert response.status_code == 202, response.text
        index_job = wait_for_job(http, response.json()["id"])
        assert index_job["status"] == "succeeded", (index_job, stack.logs())
        job_ids.append(str(index_job["id"]))

        searches = []
        for i, rerank in enumerate(["true", "true", "false"]):
            posted = http.post(
                "/v1/searches",
                files={"image": ("q.png", png_bytes((10 * i, 200, 90)), "image/png")},
                data={"instruction": "the same in blue", "limit": "3", "rerank": rerank},
            )
            assert posted.status_code == 202, posted.text
            searches.append(posted.json()["id"])
        for job_id in searches:
            job = wait_for_job(http, job_id)
            assert job["status"] == "succeeded", (job, stack.logs())
            job_ids.append(job_id)

    text, samples = scrape(stack)
    assert value(samples, "mmrag_metrics_reporter") == 1
    assert value(samples, "mmrag_jobs_submitted_total", kind="index") == 1
    assert value(samples, "mmrag_jobs_submitted_total", kind="search") == 3
    assert value(samples, "mmrag_jobs_finished_total", kind="index", status="succeeded") == 1
    assert value(samples, "mmrag_jobs_finished_total", kind="search", status="succeeded") == 3
    assert value(samples, "mmrag_index_images_total", outcome="indexed") == 6
    assert value(samples, "mmrag_index_images_total", outcome="duplicate") == 0
    assert value(samples, "mmrag_index_images_total", outcome="failed") == 1
    assert value(samples, "mmrag_rerank_total", status="applied") == 2
    assert value(samples, "mmrag_rerank_total", status="skipped") == 1
    assert value(samples, "mmrag_vlm_requests_total", outcome="ok") == 2
    assert value(samples, "mmrag_vlm_seconds_count") == 2
    assert value(samples, "mmrag_search_batch_size_count") == 3
    assert value(samples, "mmrag_job_stage_seconds_count", kind="search", stage="total") == 3
    assert value(samples, "mmrag_job_stage_seconds_count", kind="search", stage="embed") == 3
    assert value(samples, "mmrag_job_stage_seconds_count", kind="index", stage="total") == 1
    assert value(samples, "mmrag_job_stage_seconds_count", kind="index", stage="index") == 1
    # Every search's total is at most the +Inf bucket, and the buckets are cumulative.
    inf = value(samples, "mmrag_job_stage_seconds_bucket", kind="search", stage="total", le="+Inf")
    assert inf == 3
    assert value(samples, "mmrag_job_stage_seconds_bucket", kind="search", stage="total", le="0.005") <= inf
    # Live queue picture: one consumer per queue, nothing waiting.
    for queue in ("embed-search", "embed-index", "rerank"):
        assert value(samples, "mmrag_queue_consumers", queue=queue) == 1
        assert value(samples, "mmrag_queue_length", queue=queue) == 0
    # Routes are templates; no label holds an id.
    assert value(samples, "mmrag_http_requests_total", method="POST", route="/v1/searches", status="202") == 3
    assert value(samples, "mmrag_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= 4
    for job_id in job_ids:
        assert job_id not in text


def test_a_redelivered_task_does_not_count_twice(fresh_stack: Stack) -> None:
    stack = fresh_stack
    with stack.http() as http:
        posted = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((200, 10, 90)), "image/png")},
            data={"instruction": "like this", "limit": "3"},
        )
        job = wait_for_job(http, posted.json()["id"])
        assert job["status"] == "succeeded", (job, stack.logs())
    _, before = scrape(stack)

    # The same messages again, as a broker would redeliver them after a lost ack.
    celery = Celery(broker=stack.redis_url)
    for task in (TaskName.SEARCH, TaskName.RERANK):
        celery.send_task(task.value, args=[job["id"]], queue=TASK_QUEUES[task].value)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, now = scrape(stack)
        waiting = sum(value(now, "mmrag_queue_length", queue=q.value) for q in TASK_QUEUES.values())
        if waiting == 0:
            break
        time.sleep(0.2)
    time.sleep(2)  # the workers have taken both messages: let them finish (and refuse) them
    _, after = scrape(stack)
    for name, labels in [
        ("mmrag_jobs_finished_total", {"kind": "search", "status": "succeeded"}),
        ("mmrag_jobs_submitted_total", {"kind": "search"}),
        ("mmrag_rerank_total", {"status": "applied"}),
        ("mmrag_vlm_requests_total", {"outcome": "ok"}),
        ("mmrag_job_stage_seconds_count", {"kind": "search", "stage": "total"}),
    ]:
        assert value(after, name, **labels) == value(before, name, **labels), name
