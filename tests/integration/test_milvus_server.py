"""Milvus server mode: two embedder processes share one standalone Milvus (the PyPI `milvus` 2.3.5 package).

The server runs on free ports with its data in a temporary folder; the embedders reach it through
MMRAG_MILVUS_URI, so their VectorIndex builds HNSW. Everything is stopped by PID, the server included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import TEST_LIMITS, Stack, gallery, png_bytes, wait_for_job
from tests.support.processes import Service, free_port, python_module, start_redis, wait_until

pytestmark = pytest.mark.integration

COLLECTION = "shared"
QUOTED_TITLE = 'Tom\'s "best" case'
CHUNK_SIZE = 3
GALLERY_SIZE = 24  # eight chunks: enough that both embedders take some
CHUNK_LOG = re.compile(r"chunk \d+: \d+ indexed")


def _stop_pid(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL: the server process itself, by its PID (never by name)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _children(pid: int) -> list[int]:
    listing = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(child) for child in listing.read_text().split()]
    return []


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone Milvus server (`milvus run standalone`) on free ports, stopped by PID at the end."""
    try:
        from milvus import MilvusServer, MilvusServerConfig
    except ImportError as error:
        pytest.skip(f"the `milvus` package (an embedded standalone Milvus server) is not installed: {error}")
    data_dir = tmp_path_factory.mktemp("milvus-server")
    config = MilvusServerConfig()
    ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
    server = MilvusServer(config, wait_for_started=False, data_dir=str(data_dir), **ports)
    server.webservice_port = free_port()  # health and metrics; the server scans upwards from this one
    logs = data_dir / "logs"
    try:
        server.start()
    except OSError as error:
        pytest.skip(f"the milvus {getattr(sys.modules['milvus'], '__version__', '?')} binary cannot run: {error}")
    process: subprocess.Popen[bytes] = server.server_proc
    children: list[int] = []
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                tail = (logs / "milvus-stderr.log").read_text(errors="replace")[-2000:]
                pytest.skip(f"the milvus server exited with code {process.returncode} at start-up:\n{tail}")
            children[:] = _children(process.pid)
            with httpx.Client(timeout=2) as http:
                return http.get(f"http://127.0.0.1:{server.webservice_port}/healthz").text.strip() == "OK"

        wait_until(healthy, 120, "the Milvus server", interval_s=0.3)
        yield f"http://127.0.0.1:{server.listen_port}"
    except BaseException:
        for name in ("milvus-stdout.log", "milvus-stderr.log"):
            with contextlib.suppress(OSError):
                sys.stderr.write(f"----- {name}\n" + (logs / name).read_text(errors="replace")[-3000:] + "\n")
        raise
    finally:
        for child in children + _children(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _stop_pid(process)
        server.stop()  # closes its log files; the process is already gone


@pytest.fixture(scope="module")
def server_stack(tmp_path_factory: pytest.TempPathFactory, milvus_uri: str) -> Iterator[Stack]:
    """Redis, the fake VLM, the gateway, a reranker and two embedders, all on the one Milvus server."""
    log_dir = tmp_path_factory.mktemp("server-stack")
    redis_service, redis_url = start_redis(log_dir)
    vlm_port, gateway_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "OPENAI_API_KEY"},
        "MMRAG_REDIS_URL": redis_url,
        "MMRAG_DATA_DIR": str(log_dir / "data"),
        "MMRAG_MILVUS_URI": milvus_uri,
        "MMRAG_MODEL": "tiny-random",
        "MMRAG_DEVICE": "cpu",
        "MMRAG_INDEX_BATCH_SIZE": str(CHUNK_SIZE),
        "MMRAG_LLM_BASE_URL": f"http://127.0.0.1:{vlm_port}/v1",
        "MMRAG_LLM_MODEL": "fake-vlm-1",
        "OPENAI_API_KEY": "test-key",
        "HF_HUB_OFFLINE": "1",
        **TEST_LIMITS,
    }
    stack = Stack(
        env=env,
        log_dir=log_dir,
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        vlm_url=f"http://127.0.0.1:{vlm_port}/v1",
        redis_url=redis_url,
    )
    stack.services["redis"] = redis_service
    mmrag = ("services.cli.main",)
    services = {
        "fake-vlm": python_module("tests.support.fake_vlm", "--port", str(vlm_port)),
        "embedder-1": python_module(*mmrag, "worker", "embedder", "--concurrency", "1"),
        "embedder-2": python_module(*mmrag, "worker", "embedder", "--concurrency", "1"),
        "reranker": python_module(*mmrag, "worker", "reranker", "--concurrency", "1"),
        "gateway": python_module(*mmrag, "gateway", "--port", str(gateway_port)),
    }
    for name, argv in services.items():
        stack.services[name] = Service(name, argv, env, log_dir).start()
    try:
        stack.wait_ready()
        # /readyz is satisfied by one embedder; both must consume before the split can be observed.
        for name in ("embedder-1", "embedder-2"):
            log = stack.services[name].log_path
            wait_until(lambda log=log: " ready." in log.read_text(errors="replace"), 60, f"{name} consuming")
        yield stack
    except BaseException:
        sys.stderr.write(stack.logs())
        raise
    finally:
        for service in reversed(list(stack.services.values())):
            service.stop()


@pytest.fixture(scope="module")
def shared_gallery(server_stack: Stack) -> dict[str, bytes]:
    """GALLERY_SIZE images indexed in one request, split into chunks of CHUNK_SIZE; returns name → bytes."""
    images = gallery(GALLERY_SIZE)
    titles = {name: f"item {i}" for i, (name, _) in enumerate(images)}
    titles[images[5][0]] = QUOTED_TITLE
    metadata = "\n".join(json.dumps({"filename": name, "title": title}) for name, title in titles.items())
    with server_stack.http() as http:
        response = http.post(
            f"/v1/collections/{COLLECTION}/images",
            files=[("files", (name, data, "image/png")) for name, data in images]
            + [("metadata", ("meta.jsonl", metadata.encode(), "application/jsonl"))],
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
    assert job["status"] == "succeeded", (job, server_stack.logs())
    result = job["result"]
    assert isinstance(result, dict)
    assert (result["collection"], result["model"]) == (COLLECTION, "tiny-random")
    assert (result["indexed"], result["duplicates"], result["failed"]) == (GALLERY_SIZE, 0, 0)
    return dict(images)


def _search(stack: Stack, fields: dict[str, str], image: bytes | None = None) -> dict[str, Any]:
    files = {"image": ("query.png", image, "image/png")} if image is not None else None
    with stack.http() as http:
        response = http.post("/v1/searches", data=fields, files=files)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = dict(wait_for_job(http, response.json()["id"]))
    assert job["status"] == "succeeded", (job, stack.logs())
    return job


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_index_job_is_spread_over_both_embedders_and_counted_once(
    server_stack: Stack, shared_gallery: dict[str, bytes]
) -> None:
    chunk_lines = {
        name: CHUNK_LOG.findall(server_stack.services[name].log_path.read_text(errors="replace"))
        for name in ("embedder-1", "embedder-2")
    }
    assert all(chunk_lines.values()), f"a worker indexed no chunk: {chunk_lines}"
    assert sum(len(lines) for lines in chunk_lines.values()) == GALLERY_SIZE // CHUNK_SIZE
    with server_stack.http() as http:
        info = http.get(f"/v1/collections/{COLLECTION}").json()
    assert info["count"] == GALLERY_SIZE
    assert (info["model"], info["metric"]) == ("tiny-random", "COSINE")


def test_both_embedders_are_counted_as_live_consumers(server_stack: Stack) -> None:
    ready = httpx.get(f"{server_stack.gateway_url}/readyz", timeout=5).json()
    assert ready["consumers"]["embed"] == 2, ready


def test_searches_on_the_server_find_an_indexed_image_first(
    server_stack: Stack, shared_gallery: dict[str, bytes]
) -> None:
    for name in ("item_003.png", "item_017.png"):
        job = _search(server_stack, {"rerank": "false", "limit": "5", "collection": COLLECTION}, shared_gallery[name])
        candidates = job["result"]["candidates"]
        assert len(candidates) == 5
        assert candidates[0]["id"] == _sha(shared_gallery[name])
        assert candidates[0]["score"] > 0.99


def test_a_search_on_the_server_is_reranked(server_stack: Stack, shared_gallery: dict[str, bytes]) -> None:
    with server_stack.vlm() as vlm:
        vlm.post("/control/scenario", json={"name": "json"})
    job = _search(
        server_stack, {"instruction": "same, in blue", "limit": "4", "collection": COLLECTION}, png_bytes((9, 9, 200))
    )
    assert job["result"]["rerank"]["status"] == "applied", job
    assert len(job["result"]["candidates"]) == 4


def test_a_filter_value_with_quotes_matches_exactly_that_item(
    server_stack: Stack, shared_gallery: dict[str, bytes]
) -> None:
    fields = {"rerank": "false", "limit": "50", "collection": COLLECTION, "filter": json.dumps({"title": QUOTED_TITLE})}
    job = _search(server_stack, fields, png_bytes((1, 2, 3)))
    candidates = job["result"]["candidates"]
    assert [c["id"] for c in candidates] == [_sha(shared_gallery["item_005.png"])]
    assert candidates[0]["metadata"] == {"title": QUOTED_TITLE}


def test_a_filter_value_cannot_inject_an_expression(server_stack: Stack, shared_gallery: dict[str, bytes]) -> None:
    for value in ('x" or 1==1 or "', "x' or 1==1 or '", 'item 1" || metadata["title"] != "'):
        fields = {"rerank": "false", "limit": "50", "collection": COLLECTION, "filter": json.dumps({"title": value})}
        job = _search(server_stack, fields, png_bytes((1, 2, 3)))
        assert job["result"]["candidates"] == [], value
