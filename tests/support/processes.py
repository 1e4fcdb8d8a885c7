"""Starting real services for tests: each on a free port, waited for by polling, stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


class Service:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        log = self.log_path.open("ab")
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

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


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


def start_redis(log_dir: Path, *, appendonly: bool = False) -> tuple[Service, str]:
    """A private redis-server on a free port; with `appendonly`, its data survive a restart (AOF, as in production)."""
    port = free_port()
    data_dir = log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    service = Service(
        f"redis-{port}",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--dir",
            str(data_dir),
        ],
        dict(os.environ),
        log_dir,
    ).start()
    import redis

    client = redis.Redis(port=port)
    wait_until(lambda: bool(client.ping()), 10, "redis-server")
    client.close()
    return service, f"redis://127.0.0.1:{port}/0"
