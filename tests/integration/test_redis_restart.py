"""A Redis restart (AOF on, as in production) while searches are being reranked: every search succeeds, once.

The workers keep running through the outage: the reranker's VLM answers arrive while Redis is away, their writes
are retried until it is back (services/common/redis_clients.py), Celery reconnects to the broker by itself, and
the gateway answers 503 problem+json in the meantime and recovers on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack, gallery, png_bytes, running_stack, wait_for_job
from tests.support.processes import Service, wait_until

pytestmark = pytest.mark.integration

VLM_SECONDS = 2.0  # within the test stack's VLM timeout (3 s)
OUTAGE_SECONDS = 3.0


@pytest.fixture(scope="module")
def aof_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Production's lease (15 s) outlasts a short outage; 3 s, the other tests' value, would not.
    with running_stack(
        tmp_path_factory.mktemp("redis-restart"),
        {"embedder": "embedder", "reranker": "reranker"},
        {"MMRAG_LEASE_TTL_S": "15"},
        redis_appendonly=True,
    ) as stack:
        yield stack


def _restart_redis(stack: Stack) -> None:
    """Stop Redis cleanly (it writes its AOF), stay away OUTAGE_SECONDS, start it again on the same port and data."""
    old = stack.services["redis"]
    old.stop()
    time.sleep(OUTAGE_SECONDS)
    stack.services["redis"] = Service(old.name, old.argv, old.env, old.log_path.parent).start()


def _get(http: httpx.Client, path: str, **params: object) -> httpx.Response:
    """A client that retries on 503, as the Retry-After header tells it to."""
    for _ in range(60):
        response = http.get(path, params=params)
        if response.status_code != 503:
            return response
        assert response.headers["content-type"].startswith("application/problem+json")
        time.sleep(min(1.0, float(response.headers.get("retry-after", "1"))))
    raise AssertionError(f"{path} still 503 after a minute")


def test_searches_mid_rerank_all_succeed_across_a_redis_restart(aof_stack: Stack, tmp_path: Path) -> None:
    stack = aof_stack
    images = gallery(12)
    with stack.http() as http:
        job = http.post(
            "/v1/collections/default/images", files=[("files", (name, data, "image/png")) for name, data in images]
        ).json()
        assert wait_for_job(http, job["id"])["status"] == "succeeded"
        with stack.vlm() as vlm:
            vlm.post("/control/reset")
            vlm.post("/control/scenario", json={"name": "sleep", "sleep_s": VLM_SECONDS})
        searches = [
            http.post(
                "/v1/searches",
                files={"image": ("q.png", png_bytes((i * 20, 60, 200 - i * 10), pattern=i % 4), "image/png")},
                data={"instruction": "the same, brighter", "limit": "4"},
            ).json()["id"]
            for i in range(12)
        ]
        with stack.vlm() as vlm:
            # The reranker (concurrency 1 here) is in the middle of its first VLM call.
            wait_until(lambda: len(vlm.get("/control/requests").json()) >= 1, 60, "the first VLM call")

        _restart_redis(stack)
        # While Redis was away the gateway said so (503); once it is back, it serves again by itself.
        full_readyz = f"{stack.gateway_url}/readyz?full=1"
        wait_until(lambda: httpx.get(full_readyz, timeout=5).status_code == 200, 60, "readiness")

        finals = []
        for job_id in searches:
            deadline = time.monotonic() + 150
            while True:
                final = _get(http, f"/v1/jobs/{job_id}", wait=5).json()
                if final["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
                    break
            finals.append(final)

    assert [f["status"] for f in finals] == ["succeeded"] * len(searches), (finals, stack.logs())
    assert all(f["result"]["rerank"]["status"] == "applied" for f in finals), [
        f["result"]["rerank"]["reason"] for f in finals
    ]
    with stack.vlm() as vlm:  # once each: the answers that arrived during the outage were written, not redone
        assert len(vlm.get("/control/requests").json()) == len(searches)
