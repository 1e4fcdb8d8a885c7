"""Milvus server mode: two embedder processes share one standalone Milvus (the PyPI `milvus` 2.3.5 package).

The server runs on free ports with its data in a temporary folder; the embedders reach it through
MMRAG_MILVUS_URI, so their VectorIndex builds HNSW. Everything is stopped by PID, the server included.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import re
import threading
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from typing import Any

import httpx
import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

from services.common.queues import TASK_QUEUES, TaskName
from services.embedder.index import VectorIndex
from tests.integration.conftest import Stack, gallery, png_bytes, running_stack, sha256_id, wait_for_job
from tests.support.milvus_server import milvus_server
from tests.support.processes import Service, wait_until

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
    with running_stack(tmp_path_factory.mktemp("server-stack"), workers, settings) as stack:
        # /readyz is satisfied by one embedder; both must consume before the split can be observed.
        for name in ("embedder-1", "embedder-2"):
            embedder = stack.services[name]
            wait_until(functools.partial(_consuming, embedder), 60, f"{name} consuming", services=[embedder])
        yield stack


def _consuming(worker: Service) -> bool:
    return " ready." in worker.log_text()


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
    queues = [TASK_QUEUES[TaskName.SEARCH].value, TASK_QUEUES[TaskName.INDEX].value]
    assert [ready["consumers"][queue] for queue in queues] == [2, 2], ready


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


# ---- first use of a collection by several embedders at once (VectorIndex on the server) -------------------------

DIM = 8
RACERS = 4
RACE_ROUNDS = 4


def _half_created_collection(uri: str, name: str) -> MilvusClient:
    """A collection as another embedder leaves it between creating it and creating its index."""
    client = MilvusClient(uri=uri)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, max_length=64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("ext", DataType.VARCHAR, max_length=8)
    schema.add_field("metadata", DataType.JSON)
    client.create_collection(name, schema=schema)
    return client


def _hnsw(client: MilvusClient) -> Any:
    params = client.prepare_index_params()
    params.add_index("vector", index_type="HNSW", metric_type="COSINE", params={"M": 8, "efConstruction": 64})
    return params


def _use(index: VectorIndex, name: str, row: int) -> None:
    """What an index chunk does with a collection: open it (creating it if needed), write, read back."""
    index.ensure_collection(name, DIM)
    vector = np.zeros((1, DIM), dtype=np.float32)
    vector[0, row % DIM] = 1.0
    index.upsert(name, [f"{row:064x}"], vector, ["png"], [{"racer": row}])


def test_an_embedder_waits_for_the_index_another_one_is_creating(milvus_uri: str) -> None:
    """The window of the race, held open: the collection exists, its index comes 1.5 s later. Loading it in that
    window fails with "index not found" (code 700); the embedder must wait for the index instead."""
    creator = _half_created_collection(milvus_uri, "half_made")
    finish = threading.Timer(1.5, lambda: creator.create_index("half_made", _hnsw(creator)))
    finish.start()
    index = VectorIndex(milvus_uri, is_server=True)
    try:
        _use(index, "half_made", 1)
        assert index.count("half_made") == 1
        # It waited for the creator's index rather than making its own.
        assert creator.describe_index("half_made", "vector")["M"] == "8"
    finally:
        finish.join()
        index.close()
        creator.close()


def test_a_collection_whose_creator_died_before_its_index_gets_one(milvus_uri: str) -> None:
    creator = _half_created_collection(milvus_uri, "orphan")
    index = VectorIndex(milvus_uri, is_server=True, index_wait_s=0.5)
    try:
        _use(index, "orphan", 2)
        assert index.count("orphan") == 1
        assert creator.describe_index("orphan", "vector")["index_type"] == "HNSW"
    finally:
        index.close()
        creator.close()


def _racer(uri: str, names: list[str], start: Barrier, racer: int, failures: Any) -> None:
    """One embedder process: at each round, the first use of a fresh collection, at the same moment as the others."""
    index = VectorIndex(uri, is_server=True)
    try:
        for name in names:
            start.wait(timeout=120)
            try:
                _use(index, name, racer)
            except Exception as error:
                failures.put(f"racer {racer}, {name}: {type(error).__name__}: {error}")
    finally:
        index.close()


def test_embedders_racing_on_fresh_collections_all_succeed(milvus_uri: str) -> None:
    """Four processes open each of four new collections at once; every one of them must write its row."""
    names = [f"race_{round_}" for round_ in range(RACE_ROUNDS)]
    spawn = multiprocessing.get_context("spawn")  # fresh processes, like separate embedders
    start, failures = spawn.Barrier(RACERS), spawn.Queue()
    racers = [spawn.Process(target=_racer, args=(milvus_uri, names, start, r, failures)) for r in range(RACERS)]
    for process in racers:
        process.start()
    for process in racers:
        process.join(timeout=300)
    assert [p.exitcode for p in racers] == [0] * RACERS
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert not errors
    index = VectorIndex(milvus_uri, is_server=True)
    try:
        assert [index.count(name) for name in names] == [RACERS] * RACE_ROUNDS
    finally:
        index.close()
