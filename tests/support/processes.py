"""Starting real services for tests: each on a free port, waited for by polling, stopped by its PID.

Waiting never hides a failure: a service that exits while we wait for it fails the wait at once with its
log, and a check that raises anything but a "not answering yet" error fails it too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[2]

# What a service that is still starting answers with: nothing listens yet, or it is not ready to talk.
NOT_READY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    httpx.TransportError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)
# How a server says that another process took its port between free_port() and its bind().
_PORT_TAKEN = ("address already in use", "address in use")
START_ATTEMPTS = 3


class ServiceExited(RuntimeError):
    """A service exited while a test was waiting for it."""


def free_port() -> int:
    """A port nothing listens on now. Another process may take it before the caller binds it: services started
    with start_on_free_port() are started again on another port when that happens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port where every connection is refused for as long as the block runs: bound by us, never listening
    (so no other process can take it, unlike a fixed port such as 1 or 9)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    *,
    services: Iterable[Service] = (),
    retry_on: tuple[type[BaseException], ...] = NOT_READY_ERRORS,
) -> None:
    """Poll `check` until it returns true.

    An exception of a `retry_on` type counts as "not yet"; any other propagates at once. If one of `services`
    exits meanwhile, ServiceExited says so with its log. On timeout the last "not yet" error is in the message.
    """
    watched = list(services)
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        for service in watched:
            service.raise_if_exited(what)
        try:
            if check():
                return
        except retry_on as error:
            last_error = error
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    because = f" (last error: {type(last_error).__name__}: {last_error})" if last_error is not None else ""
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s{because}")


class Service:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self._log_start = log.tell()
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def raise_if_exited(self, what: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServiceExited(
                f"{self.name} exited with code {self.process.returncode} while waiting for {what}:\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL the whole process group: the Celery parent and its pool children die at once."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        """Everything this service wrote since its latest start."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def lost_its_port(self) -> bool:
        text = self.log_text().lower()
        return any(phrase in text for phrase in _PORT_TAKEN)


def start_on_free_port(
    make: Callable[[int], Service], ready: Callable[[int], bool], what: str, timeout_s: float = 60
) -> tuple[Service, int]:
    """Start `make(port)` on a free port and wait until `ready(port)`; start it again on another port if another
    process took the port first. Returns the service and its port."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        service = make(port).start()
        try:
            wait_until(functools.partial(ready, port), timeout_s, what, services=[service])
            return service, port
        except ServiceExited:
            service.stop()
            if attempt == START_ATTEMPTS or not service.lost_its_port():
                raise
        except BaseException:
            service.stop()
            raise
    raise AssertionError("unreachable")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now (Linux /proc)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            for child in (task / "children").read_text().split():
                pids.extend(process_tree(int(child)))
    return pids


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stack_env(redis_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of an mmrag process with tiny-random on the CPU: this one's, minus any MMRAG_ setting or
    VLM key of the developer's, plus `settings` (MMRAG_ variables and others)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_") and k != "OPENAI_API_KEY"}
    return {
        **inherited,
        "MMRAG_REDIS_URL": redis_url,
        "MMRAG_DATA_DIR": str(data_dir),
        "MMRAG_MODEL": "tiny-random",
        "MMRAG_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        **settings,
    }


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _redis_answers(port: int) -> bool:
    with redis.Redis(port=port, socket_connect_timeout=1) as client:
        return bool(client.ping())


def start_redis(log_dir: Path, *, appendonly: bool = False) -> tuple[Service, str]:
    """A private redis-server on a free port; returns it and its URL. Without persistence, or with `appendonly`
    its data survive a restart (AOF, as in production)."""

    def make(port: int) -> Service:
        data_dir = log_dir / f"redis-{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        aof = "yes" if appendonly else "no"
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", aof]
        return Service(f"redis-{port}", [*argv, "--dir", str(data_dir)], dict(os.environ), log_dir)

    service, port = start_on_free_port(make, _redis_answers, "redis-server", timeout_s=10)
    return service, f"redis://127.0.0.1:{port}/0"
