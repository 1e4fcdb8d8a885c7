"""A pool process whose model load takes longer than Celery's default start timeout (4 s) is not killed in a loop.

The replacement of a pool process (after a hard time limit or the OOM killer) loads the model again before it
reports up; MMRAG_WORKER_START_TIMEOUT_S gives it that time (services/common/celery_app.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack, gallery, png_bytes, running_stack, wait_for_job
from tests.support.processes import REPO, Service, process_tree, python_module, wait_until

pytestmark = pytest.mark.integration

SLOW_LOAD_DIR = Path(__file__).resolve().parents[1] / "support" / "slow_model_load"
# Longer than Celery's default worker_proc_alive_timeout (4 s).
LOAD_S = 7


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Service]]:
    python_path = os.pathsep.join(filter(None, [str(SLOW_LOAD_DIR), os.getcwd(), os.environ.get("PYTHONPATH")]))
    # Every process gets the variables; only `mmrag worker embedder` slows its model load (sitecustomize.py).
    workers = {"embedder": "embedder", "reranker": "reranker"}
    log_dir = tmp_path_factory.mktemp("slow-load")
    with running_stack(log_dir, workers, {"PYTHONPATH": python_path, "SLOW_MODEL_LOAD_S": str(LOAD_S)}) as stack:
        embedder = stack.services["embedder"]
        with stack.http() as http:
            job = http.post(
                "/v1/collections/default/images", files=[("files", (n, d, "image/png")) for n, d in gallery(4)]
            ).json()
            assert wait_for_job(http, job["id"], timeout_s=120)["status"] == "succeeded", stack.logs()
        yield stack, embedder


def _search_succeeds(http: httpx.Client, seed: int) -> None:
    response = http.post(
        "/v1/searches",
        files={"image": ("q.png", png_bytes((seed * 40, 90, 200)), "image/png")},
        data={"instruction": "like this", "limit": "3", "rerank": "false"},
    )
    assert response.status_code == 202, response.text
    final = wait_for_job(http, response.json()["id"], timeout_s=90)
    assert final["status"] == "succeeded", final


def _health(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_module("services.cli.main", "health", "worker", "embedder", "--timeout", "10"),
        env=stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_replacement_pool_process_with_a_slow_model_load_serves(slow_stack: tuple[Stack, Service]) -> None:
    stack, embedder = slow_stack
    with stack.http() as http:
        _search_succeeds(http, 1)
        [child] = process_tree(embedder.pid)[1:]
        os.kill(child, signal.SIGKILL)  # as the OOM killer or a hard time limit would
        wait_until(
            lambda: any(pid != child for pid in process_tree(embedder.pid)[1:]), 30, "a replacement pool process"
        )
        # The replacement sleeps LOAD_S before it has its model: the main process answers pings meanwhile, but the
        # readiness probe says not ready (a probe takes 1-2 s here, well inside the 7 s load).
        loading = _health(stack)
        assert loading.returncode == 1, loading.stdout
        assert "no pool process has its model loaded yet" in loading.stderr, loading.stderr
        _search_succeeds(http, 2)
        ready = _health(stack)
        assert ready.returncode == 0, ready.stderr
    log = embedder.log_tail(400)
    assert embedder.alive(), log
    assert "Timed out waiting for UP message" not in log, log
    # The first pool process and its replacement each took LOAD_S to load, and no other process was started.
    assert log.count(f"slow model load: sleeping {LOAD_S} s") == 2, log
