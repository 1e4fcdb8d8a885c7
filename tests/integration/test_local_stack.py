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
    ("stop_signal", "own_redis"),
    [(signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["ctrl-c, existing redis", "sigterm, redis started by mmrag up"],
)
def test_mmrag_up_serves_and_one_signal_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals, own_redis: bool
) -> None:
    redis_service = None
    if own_redis:
        redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: `mmrag up` starts redis-server
    else:
        redis_service, redis_url = start_redis(tmp_path)
    port = free_port()
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        python_module("services.cli.main", "up", "--port", str(port)),
        env=stack_env(redis_url, tmp_path / "data"),
        stdout=log,
        stderr=subprocess.STDOUT,
        # Not in our process group, and with default signal dispositions (as in a terminal).
        start_new_session=True,
    )
    started: list[int] = []
    try:
        wait_until(
            lambda: up.poll() is None and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200,
            120,
            "mmrag up (/readyz)",
            interval_s=0.3,
        )
        started = process_tree(up.pid)[1:]
        # redis-server (when started here), embedder and reranker with their pool children, gateway.
        assert len(started) >= (6 if own_redis else 5), started
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
