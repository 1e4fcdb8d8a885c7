"""A real local stack for integration tests: Redis, both Celery workers, the gateway, and a fake VLM."""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.processes import Service, free_port, python_module, stack_env, start_redis, wait_until

# Short limits so that recovery after a killed worker takes seconds, not the production hour.
TEST_LIMITS = {
    "MMRAG_SEARCH_TIME_LIMIT_S": "10",
    "MMRAG_INDEX_TIME_LIMIT_S": "20",
    "MMRAG_RERANK_BUDGET_S": "6",
    "MMRAG_LLM_TIMEOUT_S": "3",
    "MMRAG_VISIBILITY_TIMEOUT_S": "36",
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

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway_url, timeout=30)

    def vlm(self) -> httpx.Client:
        return httpx.Client(base_url=self.vlm_url.removesuffix("/v1"), timeout=10)

    def start_worker(self, kind: str, name: str | None = None) -> Service:
        """Start a Celery worker of `kind` (embedder or reranker) as the service `name` (default: the kind)."""
        name = name or kind
        service = Service(
            name, python_module("services.cli.main", "worker", kind, "--concurrency", "1"), self.env, self.log_dir
        ).start()
        self.services[name] = service
        return service

    def logs(self) -> str:
        return "\n".join(f"----- {name}\n{s.log_tail()}" for name, s in self.services.items())

    def wait_ready(self, timeout_s: float = 120) -> None:
        def ready() -> bool:
            for name, service in self.services.items():
                if not service.alive():
                    raise RuntimeError(f"{name} exited:\n{service.log_tail()}")
            return httpx.get(f"{self.gateway_url}/readyz?full=1", timeout=2).status_code == 200

        wait_until(ready, timeout_s, "the stack (gateway /readyz?full=1)", interval_s=0.3)


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


@contextlib.contextmanager
def running_stack(
    log_dir: Path, workers: Mapping[str, str], *, redis_appendonly: bool = False, **settings: str
) -> Iterator[Stack]:
    """Redis, the fake VLM, `workers` (service name → embedder or reranker) and the gateway, on free ports with
    tiny-random, the short TEST_LIMITS and `settings`; yielded once
    /readyz?full=1 answers 200, every process stopped afterwards, and their logs written to stderr if anything fails."""
    redis_service, redis_url = start_redis(log_dir, appendonly=redis_appendonly)
    vlm_port, gateway_port = free_port(), free_port()
    env = stack_env(
        redis_url,
        log_dir / "data",
        MMRAG_LLM_BASE_URL=f"http://127.0.0.1:{vlm_port}/v1",
        MMRAG_LLM_MODEL="fake-vlm-1",
        OPENAI_API_KEY="test-key",
        **(TEST_LIMITS | settings),
    )
    stack = Stack(
        env=env,
        log_dir=log_dir,
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        vlm_url=f"http://127.0.0.1:{vlm_port}/v1",
        redis_url=redis_url,
    )
    stack.services["redis"] = redis_service
    try:
        fake_vlm = python_module("tests.support.fake_vlm", "--port", str(vlm_port))
        stack.services["fake-vlm"] = Service("fake-vlm", fake_vlm, env, log_dir).start()
        for name, kind in workers.items():
            stack.start_worker(kind, name)
        gateway = python_module("services.cli.main", "gateway", "--port", str(gateway_port))
        stack.services["gateway"] = Service("gateway", gateway, env, log_dir).start()
        vlm_health = f"http://127.0.0.1:{vlm_port}/control/health"
        wait_until(lambda: httpx.get(vlm_health).status_code == 200, 30, "fake VLM")
        stack.wait_ready()
        yield stack
    except BaseException:
        sys.stderr.write(stack.logs())
        raise
    finally:
        for service in reversed(list(stack.services.values())):
            service.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), {"embedder": "embedder", "reranker": "reranker"}) as stack:
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


def wait_for_job(http: httpx.Client, job_id: str, timeout_s: float = 90) -> dict[str, object]:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, object] = http.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")
