"""The worker probes' local half: liveness from a file the main process touches, readiness from model markers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.health import LIVE_WITHIN_S, health_app
from services.common.worker_probe import (
    mark_alive,
    mark_model_ready,
    probe_dir,
    processes_with_model,
    seconds_since_alive,
    worker_node_name,
)


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_liveness_is_a_recent_local_mark_and_needs_no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1 of 127.0.0.1: a liveness check that touched Redis would fail.
    monkeypatch.setenv("MMRAG_REDIS_URL", "redis://127.0.0.1:1/0")
    node = worker_node_name("reranker")
    runner = CliRunner()
    never = runner.invoke(health_app, ["worker", "reranker", "--live"])
    assert never.exit_code == 1 and "has not marked itself alive" in never.output

    mark_alive(node)
    fresh = runner.invoke(health_app, ["worker", "reranker", "--live"])
    assert fresh.exit_code == 0, fresh.output
    assert fresh.output.strip() == f"{node}: alive"

    stale = time.time() - LIVE_WITHIN_S - 5
    os.utime(probe_dir(node) / "alive", (stale, stale))
    assert (seconds_since_alive(node) or 0) > LIVE_WITHIN_S
    old = runner.invoke(health_app, ["worker", "reranker", "--live"])
    assert old.exit_code == 1 and "stuck or gone" in old.output


def test_only_live_processes_count_as_having_the_model() -> None:
    node = worker_node_name("embedder")
    assert processes_with_model(node) == []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    mark_model_ready(node, dead_pid)
    mark_model_ready(node, os.getpid())
    assert processes_with_model(node) == [os.getpid()]
    # The dead process's marker is gone, so a reused pid cannot inherit it later.
    assert not (probe_dir(node) / f"model.{dead_pid}").exists()
