"""The test support that starts services: a dead service fails a wait at once, with its log; a lost port is retried."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    Service,
    ServiceExited,
    python_module,
    refused_port,
    start_on_free_port,
    wait_until,
)


def _exits_at_once(tmp_path: Path) -> Service:
    argv = [sys.executable, "-c", "import sys; print('MMRAG_DEVICE: expected auto, cpu, cuda'); sys.exit(2)"]
    return Service("broken", argv, {}, tmp_path).start()


def test_a_service_that_exits_fails_the_wait_at_once_with_its_log(tmp_path: Path) -> None:
    broken = _exits_at_once(tmp_path)
    started = time.monotonic()
    with pytest.raises(ServiceExited) as raised:
        wait_until(lambda: False, 120, "the broken service", services=[broken])
    # Seconds, not the 120 s timeout: generous for a loaded machine.
    assert time.monotonic() - started < 10
    assert "exited with code 2" in str(raised.value)
    assert "MMRAG_DEVICE: expected auto, cpu, cuda" in str(raised.value)


def test_an_unexpected_error_in_the_check_is_raised_not_waited_out() -> None:
    def check() -> bool:
        raise KeyError("readyz body without 'status'")

    started = time.monotonic()
    with pytest.raises(KeyError, match="without 'status'"):
        wait_until(check, 120, "something")
    assert time.monotonic() - started < 10


def test_a_timeout_names_the_last_error() -> None:
    with refused_port() as port, pytest.raises(TimeoutError, match=r"not ready after 1 s \(last error: Connect"):
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200, 1, "nothing")


def test_a_start_that_lost_its_port_is_started_again_on_another(tmp_path: Path) -> None:
    taken: list[socket.socket] = []

    def make(port: int) -> Service:
        if not taken:  # another process binds the port between free_port() and the service's own bind
            squatter = socket.socket()
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            taken.append(squatter)
        return Service(f"http-{port}", python_module("http.server", "--bind", "127.0.0.1", str(port)), {}, tmp_path)

    try:
        service, port = start_on_free_port(
            make, lambda port: httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200, "http.server"
        )
        try:
            assert port != taken[0].getsockname()[1]
            assert len(list(tmp_path.glob("http-*.log"))) == 2  # one start on the taken port, one on another
        finally:
            service.stop()
    finally:
        for squatter in taken:
            squatter.close()


def test_a_service_that_fails_for_another_reason_is_not_started_again(tmp_path: Path) -> None:
    starts: list[int] = []

    def make(port: int) -> Service:
        starts.append(port)
        return _exits_at_once(tmp_path)

    with pytest.raises(ServiceExited, match="MMRAG_DEVICE"):
        start_on_free_port(make, lambda port: False, "the broken service")
    assert len(starts) == 1
