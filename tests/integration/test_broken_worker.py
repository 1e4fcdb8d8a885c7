"""A worker that cannot serve takes no work: it says why and stops; jobs wait for one that can, or fail clearly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Stack, gallery, png_bytes, running_stack, wait_for_job
from tests.support.processes import Service, python_module, wait_until

pytestmark = pytest.mark.integration
SEARCH_TIME_LIMIT_S = 30


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Jobs wait for a worker that can serve until their time limit, counted from their creation. The first test
    # starts a good embedder after the job is queued, and the limit must cover that start with room to spare on a
    # loaded 2-core machine (importing torch alone can take seconds there): 10 s, the suite's usual limit, did not.
    # The visibility timeout must exceed the longest task, hard-limit grace included (settings.py checks).
    limits = {"MMRAG_SEARCH_TIME_LIMIT_S": str(SEARCH_TIME_LIMIT_S), "MMRAG_VISIBILITY_TIMEOUT_S": "60"}
    workers = {"embedder": "embedder", "reranker": "reranker"}
    with running_stack(tmp_path_factory.mktemp("broken"), workers, limits) as stack:
        with stack.http() as http:
            images = gallery(6)
            job = http.post(
                "/v1/collections/default/images", files=[("files", (n, d, "image/png")) for n, d in images]
            ).json()
            assert wait_for_job(http, job["id"])["status"] == "succeeded"
        yield stack


def _search(http: httpx.Client, seed: int) -> str:
    response = http.post(
        "/v1/searches",
        files={"image": ("q.png", png_bytes((seed * 30, 40, 90)), "image/png")},
        data={"instruction": "like this", "limit": "3", "rerank": "false"},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_an_embedder_without_its_model_stops_and_jobs_wait_for_one_that_can_serve(own_stack: Stack) -> None:
    stack = own_stack
    stack.services["embedder"].kill()
    # The full-size model with no weights and no network: it cannot load.
    env = stack.env | {"MMRAG_MODEL": "bge-visualized-base-en-v1.5"}
    argv = python_module("services.cli.main", "worker", "embedder", "--concurrency", "1")
    broken = Service("broken-embedder", argv, env, stack.log_dir).start()
    stack.services["broken-embedder"] = broken
    wait_until(lambda: not broken.alive(), 120, "the broken embedder to stop by itself")
    assert "stopping this worker so that it takes no work" in broken.log_tail(200)

    def named() -> bool:
        ready = httpx.get(f"{stack.gateway_url}/readyz?full=1", timeout=5)
        return ready.status_code == 503 and any(
            "model could not be loaded" in reason for reason in ready.json()["broken"].values()
        )

    # /readyz says which worker stopped and why (once the killed embedder's heartbeat has expired).
    wait_until(named, 30, "/readyz to name the broken worker")
    with stack.http() as http:
        job_id = _search(http, 1)
        time.sleep(2)
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "queued", "the job waits; it is not failed"

        stack.start_worker("embedder")
        final = wait_for_job(http, job_id, timeout_s=120)
    assert final["status"] == "succeeded", (final, stack.logs())


def test_a_job_no_worker_can_take_fails_as_unavailable_after_its_time_limit(own_stack: Stack) -> None:
    stack = own_stack
    stack.services["embedder"].kill()
    with stack.http() as http:
        full_readyz = f"{stack.gateway_url}/readyz?full=1"
        wait_until(lambda: httpx.get(full_readyz, timeout=5).status_code == 503, 30, "no consumer")
        # The gateway itself can still serve (a rollout of the only embedder must not take it out of its Service).
        plain = httpx.get(f"{stack.gateway_url}/readyz", timeout=5)
        assert plain.status_code == 200 and plain.json() == {"status": "ready"}, plain.text
        job_id = _search(http, 2)
        # Recovery looks every second, so the job fails soon after its time limit.
        final = wait_for_job(http, job_id, timeout_s=SEARCH_TIME_LIMIT_S + 30)
        stack.start_worker("embedder")
    assert final["status"] == "failed", final
    error = final["error"]
    assert isinstance(error, dict)
    assert error["type"] == "unavailable" and "no worker able to serve took this job" in error["detail"], error
