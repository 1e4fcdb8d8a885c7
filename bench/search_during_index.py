"""Search latency while a large index job runs, against the same search when the stack is idle.

Runs the real local stack (bench/pipeline.py's: private redis-server, both workers, the gateway) with the
tiny-random model. A small collection is indexed first; one client then runs searches on it back to back, idle,
and again while a 10k-image index job fills another collection. SPEC's goal: p99 during the index job within
idle p99 plus one index chunk's time (a search waits at most for the forward pass in progress, and a chunk is
the most that one delivery of bulk work can hold the worker). Chunk times come from the embedder's log.
Prints one JSON object.

    PYTHONPATH=. .venv/bin/python bench/search_during_index.py [--images 10000] [--searches 200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.pipeline import image_bytes, index_gallery, local_stack, percentile, summary

CHUNK_LINE = re.compile(r"chunk \d+: (\d+) indexed, (\d+) already there, (\d+) failed in (\d+) ms")


def search_once(http: httpx.Client, number: int) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = http.post(
        "/v1/searches",
        files={"image": ("q.png", image_bytes(2_000_000 + number, size=96), "image/png")},
        data={"instruction": "the same in blue", "collection": "live", "rerank": "false"},
    )
    response.raise_for_status()
    job = response.json()
    since = job["updated_at"]
    while job["status"] not in ("succeeded", "failed", "canceled"):
        job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 10, "since": since}).json()
        since = job["updated_at"]
    if job["status"] != "succeeded":
        raise RuntimeError(f"search failed: {job}")
    return (time.perf_counter() - started) * 1000, job


def searches(http: httpx.Client, count: int, first: int, while_running: str | None = None) -> list[float]:
    """Up to `count` searches back to back; with `while_running`, only while that job is still running."""
    latencies: list[float] = []
    for number in range(first, first + count):
        if while_running is not None:
            status = http.get(f"/v1/jobs/{while_running}").json()["status"]
            if status != "running" and status != "queued":
                break
        latency, _ = search_once(http, number)
        latencies.append(latency)
    return latencies


def start_index_job(http: httpx.Client, count: int) -> str:
    """One index job of `count` distinct images, uploaded in one request (MMRAG_MAX_INDEX_FILES allows 10k)."""
    files = [("files", (f"b{i}.png", image_bytes(5_000_000 + i), "image/png")) for i in range(count)]
    response = http.post("/v1/collections/bulk/images", files=files)
    response.raise_for_status()
    job_id: str = response.json()["id"]
    return job_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the index job running meanwhile")
    parser.add_argument("--searches", type=int, default=200, help="searches per phase (idle, during)")
    parser.add_argument("--live", type=int, default=1000, help="images in the collection searched")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    with local_stack(workdir) as (url, services), httpx.Client(base_url=url, timeout=600) as http:
        embedder_log = next(s for s in services if s.name == "embedder").log_path
        index_gallery(http, args.live, collection="live")
        searches(http, 20, 0)  # warm-up
        idle = searches(http, args.searches, 100)

        log_offset = embedder_log.stat().st_size
        index_job = start_index_job(http, args.images)
        while http.get(f"/v1/jobs/{index_job}").json()["stage"] != "indexing":
            time.sleep(0.05)
        during = searches(http, args.searches, 10_000, while_running=index_job)
        while http.get(f"/v1/jobs/{index_job}", params={"wait": 30}).json()["status"] in ("queued", "running"):
            pass
        final = http.get(f"/v1/jobs/{index_job}").json()
        with embedder_log.open("rb") as log:
            log.seek(log_offset)
            chunk_ms = [float(m.group(4)) for m in CHUNK_LINE.finditer(log.read().decode(errors="replace"))]

    chunk = {
        "count": len(chunk_ms),
        "p50_ms": round(percentile(chunk_ms, 50), 1),
        "max_ms": round(max(chunk_ms), 1),
    }
    idle_p99, during_p99 = percentile(idle, 99), percentile(during, 99)
    allowed = idle_p99 + chunk["p50_ms"]
    report = {
        "benchmark": "search during indexing",
        "model": "tiny-random",
        "machine": {"cpus": os.cpu_count()},
        "index_job": {
            "images": args.images,
            "status": final["status"],
            "seconds": round(final["timings_ms"]["total"] / 1000, 1),
            "chunks": chunk,
        },
        "idle_latency_ms": summary(idle) | {"n": len(idle)},
        "during_index_latency_ms": summary(during) | {"n": len(during)},
        "goal": "during p99 <= idle p99 + one index chunk's time (p50 of the chunks)",
        "goal_p99_ms": round(allowed, 1),
        "goal_met": during_p99 <= allowed,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
