"""Chaos: jobs keep arriving while a supervisor SIGKILLs random workers; nothing may be lost or counted twice.

Runs the real local stack (private redis-server, embedder, two rerankers, the gateway, a fake VLM answering in
0.3 s) with tiny-random. For `--minutes`, a client submits searches (reranked) and, every few seconds, an index
job of distinct images; meanwhile a supervisor kills a random worker (its whole process group, as when a host
or container dies) every few seconds and starts a replacement a moment later. Then the killing stops and every
job gets time to end. Prints submitted, succeeded, failed, lost (never ended) and duplicated effects (the
collection's count against the distinct images indexed). Lost and duplicated must be 0.

    PYTHONPATH=. .venv/bin/python bench/chaos.py [--minutes 2] [--kill-every-s 6]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.pipeline import image_bytes
from tests.support.processes import Service, free_port, python_module, stack_env, start_redis, wait_until

TERMINAL = ("succeeded", "failed", "canceled")
INDEX_JOB_IMAGES = 40


class Chaos:
    def __init__(self, workdir: Path, kill_every_s: float) -> None:
        self.workdir = workdir
        self.kill_every_s = kill_every_s
        self.services: dict[str, Service] = {}
        self.kills: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> str:
        redis_service, redis_url = start_redis(self.workdir)
        self.services["redis"] = redis_service
        vlm_port, port = free_port(), free_port()
        env = stack_env(
            redis_url,
            self.workdir / "data",
            MMRAG_LLM_BASE_URL=f"http://127.0.0.1:{vlm_port}/v1",
            OPENAI_API_KEY="chaos",
            MMRAG_LEASE_TTL_S="5",
            MMRAG_SEARCH_TIME_LIMIT_S="30",
            MMRAG_INDEX_TIME_LIMIT_S="60",
            MMRAG_RERANK_BUDGET_S="10",
        )
        self.env = env
        self.services["fake-vlm"] = Service(
            "fake-vlm", python_module("tests.support.fake_vlm", "--port", str(vlm_port)), env, self.workdir
        ).start()
        for name in ("embedder", "reranker-1", "reranker-2"):
            self.services[name] = self._worker(name)
        self.services["gateway"] = Service(
            "gateway",
            python_module("services.cli.main", "gateway", "--port", str(port), "--loglevel", "WARNING"),
            env,
            self.workdir,
        ).start()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz?full=1", timeout=2).status_code == 200, 180, "the stack")
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{vlm_port}/control/health").status_code == 200, 30, "VLM")
        httpx.post(f"http://127.0.0.1:{vlm_port}/control/scenario", json={"name": "sleep", "sleep_s": 0.3})
        return url

    def _worker(self, name: str) -> Service:
        kind = "embedder" if name.startswith("embedder") else "reranker"
        argv = python_module("services.cli.main", "worker", kind, "--concurrency", "1")
        return Service(name, argv, self.env, self.workdir).start()

    def supervise(self) -> None:
        """Kill a random worker every few seconds, and start its replacement a moment later."""
        rng = random.Random(7)
        while not self.stop.wait(rng.uniform(0.5, 1.5) * self.kill_every_s):
            name = rng.choice(["embedder", "reranker-1", "reranker-2"])
            with self.lock:
                self.services[name].kill()
                self.kills.append(name)
            time.sleep(rng.uniform(0.5, 3.0))
            with self.lock:
                self.services[name] = self._worker(name)

    def shutdown(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


def submit_load(url: str, until: float, jobs: list[dict[str, Any]], indexed: list[int]) -> None:
    """Searches back to back, and an index job of distinct images every few seconds, until `until`."""
    number, next_index = 0, time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < until:
            number += 1
            try:
                if time.monotonic() >= next_index:
                    first = len(indexed) * INDEX_JOB_IMAGES
                    files = [
                        ("files", (f"c{i}.png", image_bytes(7_000_000 + i), "image/png"))
                        for i in range(first, first + INDEX_JOB_IMAGES)
                    ]
                    response = http.post("/v1/collections/chaos/images", files=files)
                    if response.status_code == 202:
                        indexed.append(INDEX_JOB_IMAGES)
                        jobs.append(response.json())
                    next_index = time.monotonic() + 4
                elif indexed:
                    response = http.post(
                        "/v1/searches",
                        files={"image": ("q.png", image_bytes(9_000_000 + number, size=96), "image/png")},
                        data={"instruction": "the same in red", "collection": "chaos", "limit": "5"},
                    )
                    if response.status_code == 202:
                        jobs.append(response.json())
                time.sleep(0.1)
            except httpx.HTTPError:
                time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--kill-every-s", type=float, default=6.0)
    parser.add_argument("--grace-s", type=float, default=180.0, help="time for every job to end after the chaos")
    args = parser.parse_args()

    chaos = Chaos(Path(tempfile.mkdtemp(prefix="mmrag-chaos-")), args.kill_every_s)
    jobs: list[dict[str, Any]] = []
    indexed: list[int] = []
    try:
        url = chaos.start()
        until = time.monotonic() + args.minutes * 60
        supervisor = threading.Thread(target=chaos.supervise, daemon=True)
        supervisor.start()
        submit_load(url, until, jobs, indexed)
        chaos.stop.set()
        supervisor.join()
        ended: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + args.grace_s
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < deadline and len(ended) < len(jobs):
                for job in jobs:
                    if job["id"] not in ended:
                        current = http.get(f"/v1/jobs/{job['id']}").json()
                        if current["status"] in TERMINAL:
                            ended[job["id"]] = current
                time.sleep(1)
            count = http.get("/v1/collections/chaos").json()["count"]
    finally:
        chaos.shutdown()

    outcomes = [job["status"] for job in ended.values()]
    index_jobs = [job for job in ended.values() if job["kind"] == "index"]
    report = {
        "benchmark": "chaos",
        "minutes": args.minutes,
        "workers_killed": len(chaos.kills),
        "kills": {name: chaos.kills.count(name) for name in sorted(set(chaos.kills))},
        "jobs_submitted": len(jobs),
        "succeeded": outcomes.count("succeeded"),
        "failed": outcomes.count("failed"),
        "failed_reasons": sorted({job["error"]["detail"][:120] for job in ended.values() if job.get("error")}),
        "lost": len(jobs) - len(ended),
        "images_submitted_for_indexing": sum(indexed),
        "images_indexed_per_jobs": sum(job["result"]["indexed"] for job in index_jobs if job.get("result")),
        "collection_count": count,
        # A chunk counted twice shows as a job reporting more images than it was given.
        "duplicated": sum(max(0, job["progress"]["done"] - job["progress"]["total"]) for job in index_jobs)
        + sum(
            max(0, sum(job["result"][k] for k in ("indexed", "duplicates", "failed")) - INDEX_JOB_IMAGES)
            for job in index_jobs
            if job.get("result")
        ),
        "goal": "lost == 0 and duplicated == 0 and the collection holds every image indexed",
    }
    report["goal_met"] = (
        report["lost"] == 0 and report["duplicated"] == 0 and count == report["images_indexed_per_jobs"]
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
