"""Files a worker keeps on its own host for its container probes, so that they can answer without the broker.

- Liveness (`mmrag health worker NAME --live`): the worker's main process touches `alive` on every heartbeat,
  whether or not Redis answers. A Redis blip therefore never restarts a worker; only a main process that is gone or
  stuck does.
- Readiness (`mmrag health worker embedder`): besides the Celery ping, at least one live pool process has its model
  in memory. Each pool process writes `model.<pid>` once its model has loaded, so a pool process that is being
  replaced (after a hard time limit or the OOM killer) and is still loading counts as not ready.

The files live under the temporary directory (`TMPDIR`), per Celery node name: the probe runs in the worker's own
container, with the same host name and process namespace.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path

ALIVE_FILE = "alive"
MODEL_PREFIX = "model."


def worker_node_name(name: str) -> str:
    """The Celery node name of the worker `name` (embedder, reranker) on this host."""
    return f"{name}@{socket.gethostname()}"


def probe_dir(node: str) -> Path:
    return Path(tempfile.gettempdir()) / "mmrag-probes" / node


def mark_alive(node: str) -> None:
    directory = probe_dir(node)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ALIVE_FILE).touch()


def seconds_since_alive(node: str) -> float | None:
    """Seconds since the main process last marked itself alive; None if it never did."""
    try:
        return max(0.0, time.time() - (probe_dir(node) / ALIVE_FILE).stat().st_mtime)
    except FileNotFoundError:
        return None


def mark_model_ready(node: str, pid: int) -> None:
    directory = probe_dir(node)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{MODEL_PREFIX}{pid}").touch()


def clear_model_ready(node: str, pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (probe_dir(node) / f"{MODEL_PREFIX}{pid}").unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def processes_with_model(node: str) -> list[int]:
    """The live pool processes of `node` that have their model loaded (markers of dead processes are removed)."""
    directory = probe_dir(node)
    if not directory.is_dir():
        return []
    ready = []
    for marker in directory.glob(f"{MODEL_PREFIX}*"):
        pid_text = marker.name.removeprefix(MODEL_PREFIX)
        if not pid_text.isdigit():
            continue
        if _running(int(pid_text)):
            ready.append(int(pid_text))
        else:
            # Killed without its shutdown hook (SIGKILL, OOM): its marker must not count for its replacement.
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
    return sorted(ready)
