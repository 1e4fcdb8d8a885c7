"""A Milvus server that goes down: searches fail fast as `unavailable`, index chunks wait and are counted once.

The `milvus` package's standalone server is stopped and started again (same ports, same data) under a stack in
server mode; MMRAG_MILVUS_TIMEOUT_S bounds every call (pymilvus alone retries for minutes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Stack, gallery, png_bytes, running_stack, wait_for_job
from tests.support.milvus_server import MilvusProcess, running_milvus
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusProcess]:
    with running_milvus(tmp_path_factory.mktemp("milvus-outage")) as milvus:
        yield milvus


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory, server: MilvusProcess) -> Iterator[Stack]:
    settings = {"MMRAG_MILVUS_URI": server.uri, "MMRAG_INDEX_BATCH_SIZE": "3", "MMRAG_MILVUS_TIMEOUT_S": "3"}
    workers = {"embedder": "embedder", "reranker": "reranker"}
    with running_stack(tmp_path_factory.mktemp("outage-stack"), workers, settings) as stack:
        yield stack


def test_searches_fail_fast_and_index_chunks_wait_for_milvus(outage_stack: Stack, server: MilvusProcess) -> None:
    stack = outage_stack
    first, later = gallery(18)[:6], gallery(18)[6:]
    with stack.http() as http:
        job = http.post("/v1/collections/outage/images", files=[("files", (n, d, "image/png")) for n, d in first])
        assert wait_for_job(http, job.json()["id"])["status"] == "succeeded"

        server.stop()
        started = time.monotonic()
        search = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((20, 200, 20)), "image/png")},
            data={"collection": "outage", "rerank": "false"},
        ).json()
        failed = wait_for_job(http, search["id"], timeout_s=60)
        failed_after_s = time.monotonic() - started
        index_job = http.post(
            "/v1/collections/outage/images", files=[("files", (n, d, "image/png")) for n, d in later]
        ).json()
        # Chunks find Milvus down and are retried later: the job stays running, it does not fail.
        wait_until(lambda: "retrying in" in stack.services["embedder"].log_tail(100), 60, "a chunk to be retried later")
        assert http.get(f"/v1/jobs/{index_job['id']}").json()["status"] in ("queued", "running")

        server.start()
        final = wait_for_job(http, index_job["id"], timeout_s=180)
        count = http.get("/v1/collections/outage").json()["count"]

    assert failed["status"] == "failed" and failed["error"]["type"] == "unavailable", failed  # type: ignore[index]
    assert "Milvus" in failed["error"]["detail"]  # type: ignore[index]
    assert failed_after_s < 30, "a search must not hang on a Milvus that is down"
    assert final["status"] == "succeeded", (final, stack.logs())
    assert final["result"]["indexed"] == len(later)  # type: ignore[index]
    assert count == len(first) + len(later), "every image counted once"
