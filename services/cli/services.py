"""Running one service in the foreground: what containers run, and what `mmrag up` starts."""

from __future__ import annotations

import socket
from typing import Literal

from services.common.queues import Queue

WorkerName = Literal["embedder", "reranker"]
WORKER_QUEUES: dict[str, Queue] = {"embedder": Queue.EMBED, "reranker": Queue.RERANK}
# One model per process on the embedder (memory, GPU); the reranker waits on the VLM, so several.
DEFAULT_CONCURRENCY: dict[str, int] = {"embedder": 1, "reranker": 4}


def worker_node_name(name: str) -> str:
    return f"{name}@{socket.gethostname()}"


def run_worker(name: WorkerName, concurrency: int | None, loglevel: str) -> None:
    # Import here: each worker module loads settings and its own dependencies (torch for the embedder).
    if name == "embedder":
        from services.embedder.app import app
    else:
        from services.reranker.app import app
    app.worker_main(
        [
            "worker",
            "--queues",
            WORKER_QUEUES[name].value,
            "--hostname",
            worker_node_name(name),
            # prefork: time limits apply, a crashed child is replaced, the model loads after the fork.
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency or DEFAULT_CONCURRENCY[name]),
            "--loglevel",
            loglevel,
            "--without-mingle",
            "--without-gossip",
        ]
    )


def run_gateway(host: str, port: int, workers: int, loglevel: str) -> None:
    import uvicorn

    uvicorn.run(
        "services.gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=loglevel.lower(),
        access_log=False,
    )
