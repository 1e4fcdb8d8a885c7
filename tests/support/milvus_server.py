"""A standalone Milvus server for tests and benchmarks: the `milvus` package's `milvus run standalone`.

On free ports with its data in the given folder; started again on other ports if it exits at start-up (another
process took one of them first); stopped by PID (SIGTERM to the parent leaves its child running, so the children
are killed by PID too). Its logs go to stderr when start-up or the caller fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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


def _bind_reusing(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


class MilvusProcess:
    """One standalone server on fixed free ports and data folder, which can be stopped and started again."""

    def __init__(self, data_dir: Path) -> None:
        from milvus import MilvusServer, MilvusServerConfig

        config = MilvusServerConfig()
        ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
        self.data_dir = data_dir
        self.server = MilvusServer(config, wait_for_started=False, data_dir=str(data_dir), **ports)
        # The package checks each port with a plain bind, which fails while the stopped server's connections sit
        # in TIME_WAIT (a minute); the server itself binds with SO_REUSEADDR, and so does this check, for restarts.
        config.try_bind_port = _bind_reusing  # type: ignore[method-assign]
        self.health_port = free_port()  # health and metrics; the server scans upwards from this one
        self.process: subprocess.Popen[bytes] | None = None
        self.children: list[int] = []

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.listen_port}"

    def start(self) -> None:
        self.server.webservice_port = self.health_port
        self.server.start()
        process: subprocess.Popen[bytes] = self.server.server_proc
        self.process = process

        def healthy() -> bool:
            if process.poll() is not None:
                raise ServiceExited(f"the Milvus server exited with code {process.returncode} at start-up")
            self.children[:] = process_tree(process.pid)[1:]
            with httpx.Client(timeout=2) as http:
                return http.get(f"http://127.0.0.1:{self.server.webservice_port}/healthz").text.strip() == "OK"

        wait_until(healthy, 120, "the Milvus server", interval_s=0.3)

    def stop(self) -> None:
        if self.process is None:
            return
        for child in self.children + process_tree(self.process.pid)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _stop_pid(self.process)
        self.server.stop()  # closes its log files; the process is already gone
        self.process = None

    def dump_logs(self) -> None:
        for name in ("milvus-stdout.log", "milvus-stderr.log"):
            with contextlib.suppress(OSError):
                text = (self.data_dir / "logs" / name).read_text(errors="replace")[-3000:]
                sys.stderr.write(f"----- {name}\n{text}\n")


@contextlib.contextmanager
def milvus_server(data_dir: Path) -> Iterator[str]:
    """Yield the server's URI (http://127.0.0.1:PORT) once its health endpoint answers OK."""
    with running_milvus(data_dir) as server:
        yield server.uri


@contextlib.contextmanager
def running_milvus(data_dir: Path) -> Iterator[MilvusProcess]:
    """A started MilvusProcess, stopped by PID at the end, its logs on stderr if anything failed."""
    server = MilvusProcess(data_dir)
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                server.start()
                break
            except ServiceExited:  # another process took one of its free ports first: new ports, once more
                server.stop()
                if attempt == START_ATTEMPTS:
                    raise
                server = MilvusProcess(data_dir)
        yield server
    except BaseException:
        server.dump_logs()
        raise
    finally:
        server.stop()
