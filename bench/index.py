"""Indexing rate through the real stack, and Milvus search latency at 100k vectors on Lite and on a server.

1. images/s: a private stack (redis-server, embedder and reranker Celery workers, the gateway under uvicorn)
   indexes 10k images with the tiny-random model over HTTP, as `mmrag index` does.
2. search latency: 100k random unit vectors (dim 768) inserted directly through the embedder's VectorIndex
   (the production schema and search call: limit 9, metadata returned), then timed one query at a time, on
   Milvus Lite (its own file, in-process) and on a standalone server (the `milvus` package, HNSW). Both
   are timed once their indexes are built; the build times are reported too.

    PYTHONPATH=. .venv/bin/python bench/index.py [--images 10000] [--vectors 100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.pipeline import index_gallery, local_stack, summary
from services.embedder.index import VectorIndex
from tests.support.milvus_server import milvus_server
from tests.support.processes import wait_until

TARGETS = {"server_search_p50_ms": 5, "lite_search_p50_ms": 40}
DIM = 768
INSERT_BATCH = 5_000
COLLECTION = "bench_search"


def stack_index_rate(images: int, workdir: Path) -> dict[str, Any]:
    with local_stack(workdir) as (url, _), httpx.Client(base_url=url, timeout=300) as http:
        started = time.perf_counter()
        rate = index_gallery(http, images)
        elapsed = time.perf_counter() - started
        count = http.get("/v1/collections/bench").json()["count"]
    return {"images": images, "indexed": count, "seconds": round(elapsed, 1), "images_per_s": round(rate, 1)}


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def fill(index: VectorIndex, vectors: int, rng: np.random.Generator) -> float:
    index.ensure_collection(COLLECTION, DIM)
    started = time.perf_counter()
    for start in range(0, vectors, INSERT_BATCH):
        count = min(INSERT_BATCH, vectors - start)
        ids = [f"{i:064x}" for i in range(start, start + count)]
        metadata = [{"title": f"item {i}", "category": f"cat{i % 7}"} for i in range(start, start + count)]
        index.upsert(COLLECTION, ids, unit_vectors(rng, count), ["jpg"] * count, metadata)
    return time.perf_counter() - started


def time_searches(index: VectorIndex, queries: int, rng: np.random.Generator) -> dict[str, Any]:
    probes = unit_vectors(rng, queries + 20)
    for probe in probes[:20]:  # warm-up: connections, caches, lazy loading
        index.search(COLLECTION, probe, 9, {})
    latencies = []
    for probe in probes[20:]:
        started = time.perf_counter()
        hits = index.search(COLLECTION, probe, 9, {})
        latencies.append((time.perf_counter() - started) * 1000)
        assert len(hits) == 9
    return {"queries": queries, "limit": 9, "latency_ms": summary(latencies)}


def _lite_segments_indexed(db: Path) -> bool:
    """Lite builds each segment's index in a background thread, after the flush returns; until then a
    search scans the segment. Its describe_index reports every row as indexed regardless, so look at the
    files: every data segment needs its index sidecar."""
    segments = list((db / "collections" / COLLECTION).glob("partitions/*/data/*.parquet"))
    return bool(segments) and all(
        any(segment.parent.parent.glob(f"indexes/{segment.stem}.vector.*")) for segment in segments
    )


def lite_latency(vectors: int, queries: int, workdir: Path, rng: np.random.Generator) -> dict[str, Any]:
    db = workdir / "lite.db"
    index = VectorIndex(str(db))
    try:
        insert_s = fill(index, vectors, rng)
        started = time.perf_counter()
        index.flush(COLLECTION)
        wait_until(lambda: _lite_segments_indexed(db), 600, "Lite's segment indexes", interval_s=1)
        build_s = time.perf_counter() - started
        return {
            "vectors": index.count(COLLECTION),
            "index": "AUTOINDEX (Lite's default; ef has no measurable effect on it)",
            "insert_s": round(insert_s, 1),
            "flush_and_build_s": round(build_s, 1),
            **time_searches(index, queries, rng),
        }
    finally:
        index.close()


def wait_for_index(index: VectorIndex, vectors: int, timeout_s: float = 600) -> float:
    """Seal the segments, then wait until HNSW covers every row (searches of unsealed rows scan them)."""
    client = index._client
    started = time.perf_counter()
    client.flush(COLLECTION)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.describe_index(COLLECTION, "vector")
        if int(info.get("indexed_rows", 0)) >= vectors and int(info.get("pending_index_rows", 0)) == 0:
            break
        time.sleep(1)
    else:
        raise TimeoutError(f"HNSW not built after {timeout_s:.0f} s: {info}")
    # Reload so the query node serves the indexed sealed segments rather than the growing ones.
    client.release_collection(COLLECTION)
    client.load_collection(COLLECTION)
    return time.perf_counter() - started


def build_on_server(index: VectorIndex, vectors: int, rng: np.random.Generator) -> dict[str, Any]:
    insert_s = fill(index, vectors, rng)
    build_s = wait_for_index(index, vectors)
    return {
        "vectors": vectors,
        "index": "HNSW M=16 efConstruction=200 (the embedder's), ef=64",
        "insert_s": round(insert_s, 1),
        "flush_and_build_s": round(build_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images indexed through the stack (0: skip)")
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors in the search benchmark")
    parser.add_argument("--queries", type=int, default=300, help="timed searches per backend")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mmrag-bench-index-"))
    rng = np.random.default_rng(0)
    indexing = stack_index_rate(args.images, workdir / "stack") if args.images else None
    with milvus_server(workdir / "milvus-server") as uri, ThreadPoolExecutor(1) as pool:
        server_index = VectorIndex(uri, is_server=True)
        try:
            # The server builds HNSW while Lite is filled (minutes each on 2 cores); searches are timed apart.
            building = pool.submit(build_on_server, server_index, args.vectors, np.random.default_rng(1))
            lite = lite_latency(args.vectors, args.queries, workdir, rng)
            server = {**building.result(), **time_searches(server_index, args.queries, rng)}
        finally:
            server_index.close()
    report = {
        "benchmark": "index",
        "model": "tiny-random",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "indexing_through_the_stack": indexing,
        "search_lite": lite,
        "search_server": server,
        "targets": TARGETS,
        "meets": {
            "server_p50": server["latency_ms"]["p50"] <= TARGETS["server_search_p50_ms"],
            "lite_p50": lite["latency_ms"]["p50"] <= TARGETS["lite_search_p50_ms"],
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
