"""A real local stack for integration tests: Redis, both Celery workers, the gateway, and a fake VLM."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from services.cli.services import WORKER_QUEUES
from services.common.blobs import BLOB_DIR
from services.common.job_store import job_key
from services.common.queues import Queue
from tests.support.contract import RESPONSES, gateway_client, gateway_document, violations
from tests.support.processes import (
    Service,
    process_tree,
    python_module,
    stack_env,
    start_on_free_port,
    start_redis,
    wait_until,
)
from tests.support.tasks import unfinished

# Short limits so that recovery after a killed worker takes seconds, not the production hour. The visibility
# timeout must exceed the longest task: the rerank one, 4 s of budget + 10 s + 15 s of hard-limit grace.
TEST_LIMITS = {
    "MMRAG_SEARCH_TIME_LIMIT_S": "10",
    "MMRAG_INDEX_TIME_LIMIT_S": "10",
    "MMRAG_RERANK_BUDGET_S": "4",
    "MMRAG_LLM_TIMEOUT_S": "3",
    "MMRAG_VISIBILITY_TIMEOUT_S": "30",
    # A dead worker's jobs are taken over 3 s after its last lease renewal (production: 15 s).
    "MMRAG_LEASE_TTL_S": "3",
}


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    gateway_url: str
    vlm_url: str
    redis_url: str
    services: dict[str, Service] = field(default_factory=dict)

    def http(self, **options: Any) -> httpx.Client:
        """A client of the gateway; its answers are checked against the OpenAPI document (openapi_contract)."""
        return gateway_client(self.gateway_url, **options)

    def vlm(self) -> httpx.Client:
        return httpx.Client(base_url=self.vlm_url.removesuffix("/v1"), timeout=10)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def start_worker(self, kind: str, name: str | None = None, concurrency: int | None = None) -> Service:
        """Start a Celery worker of `kind` (embedder or reranker) as the service `name` (default: the kind), with
        the product's default concurrency (1 embedder process, 4 reranker processes) unless told otherwise."""
        name = name or kind
        argv = python_module("services.cli.main", "worker", kind)
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        service = Service(name, argv, self.env, self.log_dir).start()
        self.services[name] = service
        return service

    def pool_children(self, name: str) -> list[int]:
        """The PIDs of the Celery pool processes of worker `name` (the ones that run tasks)."""
        service = self.services[name]
        return [pid for pid in process_tree(service.pid) if pid != service.pid]

    def freeze_running(
        self, worker: str, task: str, started: Callable[[], bool] = lambda: True
    ) -> tuple[str, list[int]]:
        """Stop (SIGSTOP) the pool of `worker` (one process) while it runs a `task` task, once `started()` also
        says so; return that task's id and the stopped PIDs.

        Stopped first and checked after (the log and `started()` both), so the task is certainly unfinished while the
        pool stands still: one that ended between the look and the stop is let go, and the next one is caught
        instead.
        """
        service = self.services[worker]
        for _ in range(5):
            wait_until(
                lambda: bool(unfinished(service.log_text(), task)) and started(),
                60,
                f"a {task} task to start",
                interval_s=0.01,
                services=[service],
            )
            pool = self.pool_children(worker)
            for pid in pool:
                os.kill(pid, signal.SIGSTOP)
            running = unfinished(service.log_text(), task)
            if running and started():
                return running[0], pool
            for pid in pool:
                os.kill(pid, signal.SIGCONT)
        raise AssertionError(f"no {task} task could be caught running on {worker}")

    def logs(self) -> str:
        return "\n".join(f"----- {name}\n{s.log_tail()}" for name, s in self.services.items())

    def wait_ready(self, timeout_s: float = 120, unserved: Collection[str] = ()) -> None:
        """Wait for /readyz?full=1; with `unserved` (queues no started worker consumes), for it to miss only those."""

        def ready() -> bool:
            response = httpx.get(f"{self.gateway_url}/readyz?full=1", timeout=2)
            if response.status_code == 200 or not unserved or response.status_code != 503:
                return response.status_code == 200
            missing = response.json().get("missing", [])
            return bool(missing) and all(any(f"{queue!r}" in line for queue in unserved) for line in missing)

        wait_until(
            ready, timeout_s, "the stack (gateway /readyz?full=1)", interval_s=0.3, services=self.services.values()
        )


_JOB_RECORD = re.compile(re.escape(job_key("").encode()) + rb"[0-9a-f]{32}")


def stored_requests(stack: Stack) -> set[bytes]:
    """The job records in Redis and the uploaded query images in the media store now. A refused request must add
    none: a job's task is only ever sent after its record exists, so no new record also means nothing was queued."""
    queries = Path(stack.env["MMRAG_DATA_DIR"]) / "media" / BLOB_DIR / "query"
    blobs = {b"query-image:" + path.name.encode() for path in queries.glob("*")} if queries.is_dir() else set()
    with stack.redis() as client:
        jobs = {key for key in client.scan_iter(job_key("*")) if _JOB_RECORD.fullmatch(key)}
        return jobs | blobs


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (96, 80), pattern: int = 0) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 8 + pattern):
        for y in range(0, size[1], 8):
            image.putpixel((x, y), (255 - color[0], 255 - color[1], 255 - color[2]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sha256_id(data: bytes) -> str:
    """An image's id as SPEC defines it (computed here, not by the product under test)."""
    return hashlib.sha256(data).hexdigest()


def gallery(count: int) -> list[tuple[str, bytes]]:
    return [
        (f"item_{i:03d}.png", png_bytes(((i * 37) % 256, (i * 91) % 256, (i * 53) % 256), pattern=i % 5))
        for i in range(count)
    ]


def _answers_200(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


@contextlib.contextmanager
def running_stack(
    log_dir: Path,
    workers: Mapping[str, str],
    settings: Mapping[str, str] | None = None,
    concurrency: Mapping[str, int] | None = None,
    *,
    redis_appendonly: bool = False,
) -> Iterator[Stack]:
    """Redis, the fake VLM, `workers` (service name → embedder or reranker, with `concurrency` per service name
    where given) and the gateway, on free ports with tiny-random, the short TEST_LIMITS and `settings` (MMRAG_
    variables); yielded once /readyz?full=1 answers 200, every process stopped afterwards, and their logs written to
    stderr if anything fails. With `redis_appendonly`, Redis keeps its data across a restart, as in production."""
    services: dict[str, Service] = {}
    try:
        services["redis"], redis_url = start_redis(log_dir, appendonly=redis_appendonly)
        services["fake-vlm"], vlm_port = start_on_free_port(
            lambda port: Service(
                "fake-vlm", python_module("tests.support.fake_vlm", "--port", str(port)), dict(os.environ), log_dir
            ),
            lambda port: _answers_200(f"http://127.0.0.1:{port}/control/health"),
            "the fake VLM",
        )
        # A temporary directory per stack: the workers' probe files (worker_probe.py) are per host and node name,
        # which every stack of the suite shares.
        (log_dir / "tmp").mkdir(exist_ok=True)
        env = stack_env(
            redis_url,
            log_dir / "data",
            TMPDIR=str(log_dir / "tmp"),
            MMRAG_LLM_BASE_URL=f"http://127.0.0.1:{vlm_port}/v1",
            MMRAG_LLM_MODEL="fake-vlm-1",
            OPENAI_API_KEY="test-key",
            **{**TEST_LIMITS, **(settings or {})},
        )
        stack = Stack(
            env=env,
            log_dir=log_dir,
            gateway_url="",
            vlm_url=f"http://127.0.0.1:{vlm_port}/v1",
            redis_url=redis_url,
            services=services,
        )
        for name, kind in workers.items():
            stack.start_worker(kind, name, (concurrency or {}).get(name))
        services["gateway"], gateway_port = start_on_free_port(
            lambda port: Service(
                "gateway", python_module("services.cli.main", "gateway", "--port", str(port)), env, log_dir
            ),
            lambda port: _answers_200(f"http://127.0.0.1:{port}/healthz"),
            "the gateway (/healthz)",
        )
        stack.gateway_url = f"http://127.0.0.1:{gateway_port}"
        consumed = {queue for kind in workers.values() for queue in WORKER_QUEUES[kind]}
        stack.wait_ready(unserved=[queue.value for queue in Queue if queue not in consumed])
        yield stack
    except BaseException:
        sys.stderr.write("\n".join(f"----- {name}\n{s.log_tail()}" for name, s in services.items()))
        raise
    finally:
        for service in reversed(list(services.values())):
            service.stop()


@pytest.fixture(scope="session", autouse=True)
def openapi_contract() -> Iterator[None]:
    """Every answer the tests' gateway clients received must be one the OpenAPI document promises: its status listed
    for its operation, its body valid against the schema listed (tests/support/contract.py). Checked once, at the
    end of the session, so a failure names each route and status that broke it."""
    RESPONSES.drain()
    yield
    found = violations(gateway_document(), RESPONSES.drain())
    if found:
        pytest.fail("answers the OpenAPI document does not promise:\n" + "\n".join(found), pytrace=False)


# Images per index chunk in the shared stack (the product default, set so that tests can count chunks).
CHUNK_SIZE = 32


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack most tests share: one embedder process, and the reranker with its default 4 processes."""
    workers = {"embedder": "embedder", "reranker": "reranker"}
    settings = {"MMRAG_INDEX_BATCH_SIZE": str(CHUNK_SIZE)}
    with running_stack(tmp_path_factory.mktemp("stack"), workers, settings) as stack:
        yield stack


@pytest.fixture(scope="session")
def indexed(stack: Stack) -> dict[str, bytes]:
    """A collection `default` with 20 gallery images, indexed through the HTTP API."""
    images = gallery(20)
    metadata = "\n".join(
        f'{{"filename": "{name}", "title": "item {i}", "category": "cat{i % 2}"}}' for i, (name, _) in enumerate(images)
    )
    with stack.http() as http:
        response = http.post(
            "/v1/collections/default/images",
            files=[("files", (name, data, "image/png")) for name, data in images]
            + [("metadata", ("meta.jsonl", metadata.encode(), "application/jsonl"))],
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
        assert job["status"] == "succeeded", (job, stack.logs())
    return dict(images)


def wait_for_job(http: httpx.Client, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


@contextlib.contextmanager
def paused(stack: Stack, name: str = "embedder") -> Iterator[None]:
    """Freeze a whole worker (main process and pool, SIGSTOP) so that its work waits in the queue meanwhile."""
    group = stack.services[name].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)
