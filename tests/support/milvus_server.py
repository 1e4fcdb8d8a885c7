"""A standalone Milvus server for tests and benchmarks: the `milvus` package's `milvus run standalone`.

On free ports with its data in the given folder; started again on other ports if it exits at start-up (another
process took one of them first); stopped by PID (SIGTERM to the parent leaves its child running, so the children
are killed by PID too). Its logs go to stderr when start-up or the caller fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import START_ATTEMPTS, ServiceExited, free_port, process_tree, wait_until


def _stop_pid(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL: the server process itself, by its PID (never by name)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _stop(server: Any, children: list[int]) -> None:
    process: subprocess.Popen[bytes] = server.server_proc
    for child in children + process_tree(process.pid)[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    _stop_pid(process)
    server.stop()  # closes its log files; the process is already gone


def _start(data_dir: Path, children: list[int]) -> Any:
    """A started server once its health endpoint answers OK; `children` collects its child processes."""
    from milvus import MilvusServer, MilvusServerConfig

    config = MilvusServerConfig()
    ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
    server = MilvusServer(config, wait_for_started=False, data_dir=str(data_dir), **ports)
    server.webservice_port = free_port()  # health and metrics; the server scans upwards from this one
    server.start()
    process: subprocess.Popen[bytes] = server.server_proc

    def healthy() -> bool:
        if process.poll() is not None:
            raise ServiceExited(f"the Milvus server exited with code {process.returncode} at start-up")
        children[:] = process_tree(process.pid)[1:]
        with httpx.Client(timeout=2) as http:
            return http.get(f"http://127.0.0.1:{server.webservice_port}/healthz").text.strip() == "OK"

    try:
        wait_until(healthy, 120, "the Milvus server", interval_s=0.3)
    except BaseException:
        _stop(server, children)
        raise
    return server


@contextlib.contextmanager
def milvus_server(data_dir: Path) -> Iterator[str]:
    """Yield the server's URI (http://127.0.0.1:PORT) once its health endpoint answers OK."""
    logs = data_dir / "logs"
    children: list[int] = []
    server = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                server = _start(data_dir, children)
                break
            except ServiceExited:
                if attempt == START_ATTEMPTS:
                    raise
        assert server is not None
        yield f"http://127.0.0.1:{server.listen_port}"
    except BaseException:
        for name in ("milvus-stdout.log", "milvus-stderr.log"):
            with contextlib.suppress(OSError):
                sys.stderr.write(f"----- {name}\n" + (logs / name).read_text(errors="replace")[-3000:] + "\n")
        raise
    finally:
        if server is not None:
            _stop(server, children)
