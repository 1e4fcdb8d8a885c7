"""Milvus server mode: two embedder processes share one standalone Milvus (the PyPI `milvus` 2.3.5 package).

The server runs on free ports with its data in a temporary folder; the embedders reach it through
MMRAG_MILVUS_URI, so their VectorIndex builds HNSW. Everything is stopped by PID, the server included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack, gallery, png_bytes, running_stack, sha256_id, wait_for_job
from tests.support.milvus_server import milvus_server
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

COLLECTION = "shared"
QUOTED_TITLE = 'Tom\'s "best" case'
CHUNK_SIZE = 3
GALLERY_SIZE = 24  # eight chunks: enough that both embedders take some
CHUNK_LOG = re.compile(r"chunk \d+: \d+ indexed")


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone Milvus server on free ports (a dev dependency: if it cannot start, that is a failure)."""
    with milvus_server(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def server_stack(tmp_path_factory: pytest.TempPathFactory, milvus_uri: str) -> Iterator[Stack]:
    """Redis, the fake VLM, the gateway, a reranker and two embedders, all on the one Milvus server."""
    workers = {"embedder-1": "embedder", "embedder-2": "embedder", "reranker": "reranker"}
    settings = {"MMRAG_MILVUS_URI": milvus_uri, "MMRAG_INDEX_BATCH_SIZE": str(CHUNK_SIZE)}
    with running_stack(tmp_path_factory.mktemp("server-stack"), workers, **settings) as stack:
        # /readyz is satisfied by one embedder; both must consume before the split can be observed.
        for name in ("embedder-1", "embedder-2"):
            log = stack.services[name].log_path
            wait_until(lambda log=log: " ready." in log.read_text(errors="replace"), 60, f"{name} consuming")
        yield stack


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
    ready = httpx.get(f"{server_stack.gateway_url}/readyz?full=1", timeout=5).json()
    assert ready["consumers"]["embed-search"] == ready["consumers"]["embed-index"] == 2, ready


def test_searches_on_the_server_find_an_indexed_image_first(
    server_stack: Stack, shared_gallery: dict[str, bytes]
) -> None:
    for name in ("item_003.png", "item_017.png"):
        job = _search(server_stack, {"rerank": "false", "limit": "5", "collection": COLLECTION}, shared_gallery[name])
        candidates = job["result"]["candidates"]
        assert len(candidates) == 5
        assert candidates[0]["id"] == sha256_id(shared_gallery[name])
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
    assert [c["id"] for c in candidates] == [sha256_id(shared_gallery["item_005.png"])]
    assert candidates[0]["metadata"] == {"title": QUOTED_TITLE}


def test_a_filter_value_cannot_inject_an_expression(server_stack: Stack, shared_gallery: dict[str, bytes]) -> None:
    for value in ('x" or 1==1 or "', "x' or 1==1 or '", 'item 1" || metadata["title"] != "'):
        fields = {"rerank": "false", "limit": "50", "collection": COLLECTION, "filter": json.dumps({"title": value})}
        job = _search(server_stack, fields, png_bytes((1, 2, 3)))
        assert job["result"]["candidates"] == [], value
