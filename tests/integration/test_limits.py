"""The limits the README promises, on a stack of their own with small values: task time limits (soft: the job
fails saying so; hard: the process is replaced and the job still ends), upload limits (413), readiness without a
consumer (503), and the TTL on everything a job leaves in Redis."""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from services.common.job_store import job_key
from services.common.queues import TASK_QUEUES, TaskName
from services.common.settings import HARD_LIMIT_GRACE_S
from tests.integration.conftest import Stack, png_bytes, running_stack, stored_requests, wait_for_job
from tests.support.processes import is_running, wait_until

pytestmark = pytest.mark.integration

INDEX_SOFT_LIMIT_S = 4.0
MAX_UPLOAD_MB = 0.5
MAX_INDEX_FILES = 5
JOB_TTL_S = 60  # the smallest MMRAG_JOB_TTL_S allowed
LIMITS = {
    "MMRAG_INDEX_TIME_LIMIT_S": f"{INDEX_SOFT_LIMIT_S:g}",
    "MMRAG_SEARCH_TIME_LIMIT_S": "5",
    "MMRAG_RERANK_BUDGET_S": "2",
    "MMRAG_LLM_TIMEOUT_S": "2",
    # Above the longest task (the rerank one: 2 s of budget + 10 s, + 15 s of grace), and short: a job whose chunk
    # died with its process at the hard limit is sent again by the gateway once silent this long.
    "MMRAG_VISIBILITY_TIMEOUT_S": "28",
    "MMRAG_MAX_UPLOAD_MB": f"{MAX_UPLOAD_MB:g}",
    "MMRAG_MAX_INDEX_FILES": str(MAX_INDEX_FILES),
    "MMRAG_JOB_TTL_S": str(JOB_TTL_S),
    "MMRAG_INDEX_BATCH_SIZE": "8",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workers = {"embedder": "embedder", "reranker": "reranker"}
    with running_stack(tmp_path_factory.mktemp("limits"), workers, LIMITS, {"reranker": 1}) as stack:
        with stack.http() as http:  # the first chunk opens the index: keep that out of the timed tests
            warm = http.post("/v1/collections/default/images", files=[("files", _png("warm"))])
            assert wait_for_job(http, warm.json()["id"])["status"] == "succeeded", stack.logs()
        yield stack


def _png(name: str, shade: int = 0) -> tuple[str, bytes, str]:
    return (f"{name}.png", png_bytes((shade, 100, 200 - shade), pattern=shade % 5), "image/png")


def _noise_png(megabytes: float) -> bytes:
    """A valid PNG of about `megabytes` (noise does not compress)."""
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5) + 16
    pixels = np.random.default_rng(7).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _index_job(http: httpx.Client, collection: str, count: int) -> dict[str, object]:
    response = http.post(
        f"/v1/collections/{collection}/images", files=[("files", _png(f"{collection}{i}", i)) for i in range(count)]
    )
    assert response.status_code == 202, response.text
    job: dict[str, object] = response.json()
    return job


def _indexing(http: httpx.Client, job_id: object) -> bool:
    """The chunk's task has begun (it marks the job running before it reads a file)."""
    return bool(http.get(f"/v1/jobs/{job_id}").json()["stage"] == "indexing")


def test_a_task_past_its_soft_time_limit_ends_its_job_with_a_clear_error(limited: Stack) -> None:
    with limited.http() as http:
        job = _index_job(http, "soft", 3)
        _, pool = limited.freeze_running("embedder", TaskName.INDEX.value, lambda: _indexing(http, job["id"]))
        # The soft limit passes while the chunk stands still (stopped, as if stuck in a long call); resumed well
        # before the hard limit, the task gets the soft limit's exception.
        time.sleep(INDEX_SOFT_LIMIT_S + 2)
        for pid in pool:
            os.kill(pid, signal.SIGCONT)
        final = wait_for_job(http, str(job["id"]), timeout_s=30)

    assert final["status"] == "failed", (final, limited.logs())
    assert final["error"]["type"] == "internal"
    assert "indexing chunk 0 ran past its time limit and was stopped" in final["error"]["detail"], final["error"]
    assert limited.pool_children("embedder") == pool, "the soft limit must not cost the worker its process"


def test_a_task_past_its_hard_time_limit_loses_its_process_and_the_job_still_ends(limited: Stack) -> None:
    embedder = limited.services["embedder"]
    with limited.http() as http:
        job = _index_job(http, "hard", 3)
        _, pool = limited.freeze_running("embedder", TaskName.INDEX.value, lambda: _indexing(http, job["id"]))
        # Stopped for good: at the hard limit the worker kills the process and starts another in its place, which
        # must come up (it loads the model first) and take work again.
        hard_limit_s = INDEX_SOFT_LIMIT_S + HARD_LIMIT_GRACE_S
        wait_until(
            lambda: not any(is_running(pid) for pid in pool) and bool(limited.pool_children("embedder")),
            hard_limit_s + 30,
            "the stopped process to be replaced",
            services=[embedder],
        )
        # The chunk died with its process: the gateway sends it again once the job has been silent past the
        # visibility timeout, and the new process finishes it.
        final = wait_for_job(http, str(job["id"]), timeout_s=90)
        collection = http.get("/v1/collections/hard").json()

    assert final["status"] == "succeeded", (final, limited.logs())
    assert final["progress"]["done"] == final["progress"]["total"] == 3
    assert collection["count"] == 3
    assert "Hard time limit" in embedder.log_text()
    assert not set(limited.pool_children("embedder")) & set(pool)


def test_uploads_over_the_limits_are_refused_with_413_naming_the_setting(limited: Stack) -> None:
    big = _noise_png(MAX_UPLOAD_MB * 1.2)
    before = stored_requests(limited)
    with limited.http() as http:
        multipart = http.post("/v1/searches", files={"image": ("big.png", big, "image/png")})
        as_json = http.post("/v1/searches", json={"image_base64": base64.b64encode(big).decode()})
        one_too_many, far_too_many = (
            http.post("/v1/collections/default/images", files=[("files", _png(f"n{i}", i)) for i in range(count)])
            for count in (MAX_INDEX_FILES + 1, 3 * MAX_INDEX_FILES)
        )
    named = {
        multipart: "MMRAG_MAX_UPLOAD_MB",
        as_json: f"{MAX_UPLOAD_MB:g} MB",
        one_too_many: "MMRAG_MAX_INDEX_FILES",
        far_too_many: "MMRAG_MAX_INDEX_FILES",
    }
    for response, named_limit in named.items():
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "payload-too-large"
        assert named_limit in response.json()["detail"], response.json()
    assert stored_requests(limited) == before


def test_an_oversized_file_in_an_index_upload_is_listed_and_the_others_indexed(limited: Stack) -> None:
    with limited.http() as http:
        response = http.post(
            "/v1/collections/oversized/images",
            files=[("files", _png("small")), ("files", ("big.png", _noise_png(MAX_UPLOAD_MB * 1.2), "image/png"))],
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert (job["result"]["indexed"], job["result"]["failed"]) == (1, 1)
    [failure] = job["progress"]["failed"]
    assert failure["filename"] == "big.png" and "MMRAG_MAX_UPLOAD_MB" in failure["reason"], failure


def test_readyz_is_503_naming_the_queue_without_a_consumer_until_one_is_back(limited: Stack) -> None:
    rerank_queue = TASK_QUEUES[TaskName.RERANK].value
    limited.services["reranker"].stop()
    try:
        # The full readiness (?full=1) counts consumers; the plain one asks only whether the gateway can serve.
        readyz = f"{limited.gateway_url}/readyz?full=1"
        wait_until(lambda: httpx.get(readyz, timeout=2).status_code == 503, 30, "/readyz to see the reranker gone")
        unready = httpx.get(readyz, timeout=2)
        assert unready.headers["content-type"] == "application/problem+json"
        assert unready.headers["retry-after"]
        assert unready.json()["type"] == "unavailable"
        assert f"no live consumer on queue {rerank_queue!r}" in unready.json()["detail"], unready.json()
        assert unready.json()["missing"] == [f"no live consumer on queue {rerank_queue!r}"]
    finally:
        limited.start_worker("reranker", concurrency=1)
    limited.wait_ready(60)


def test_everything_a_job_leaves_in_redis_expires_with_the_job_ttl(limited: Stack) -> None:
    key = "ttl-idempotency-key"
    with limited.http() as http:
        index = wait_for_job(http, str(_index_job(http, "expiring", MAX_INDEX_FILES)["id"]))
        response = http.post(
            "/v1/searches",
            files={"image": _png("query", 3)},
            data={"instruction": "expiring", "limit": "2", "collection": "expiring"},
            headers={"Idempotency-Key": key},
        )
        search = wait_for_job(http, response.json()["id"])
    assert search["status"] == index["status"] == "succeeded", (search, index)
    assert search["result"]["rerank"]["panorama_url"], search["result"]["rerank"]

    with limited.redis() as client:
        left = {k for job in (search, index) for k in client.scan_iter(f"*{job['id']}*")}
        left |= set(client.scan_iter(f"*{key}*"))
        expected = {job_key(search["id"]), job_key(index["id"])}
        assert expected <= {k.decode() for k in left}, left
        # Query images and panoramas are files in the media store, not Redis keys (blobs.py).
        assert not any(k.startswith(b"mmrag:blob:") for k in left), left
        assert any(key in k.decode() for k in left), "the Idempotency-Key is not stored"
        ttls = {k.decode(): client.ttl(k) for k in left}
    assert all(0 < ttl <= JOB_TTL_S for ttl in ttls.values()), ttls
