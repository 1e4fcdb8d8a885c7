"""Running one service in the foreground: what containers run, and what `mmrag up` starts."""

from __future__ import annotations

from typing import Literal

from services.common.logs import json_logs
from services.common.queues import EMBEDDER_QUEUES, RERANKER_QUEUES, Queue
from services.common.worker_probe import worker_node_name

WorkerName = Literal["embedder", "reranker"]
EmbedderWork = Literal["search", "index"]
WORKER_QUEUES: dict[str, tuple[Queue, ...]] = {"embedder": EMBEDDER_QUEUES, "reranker": RERANKER_QUEUES}
# `--only`: an embedder dedicated to one kind of work (searches and deletes, or index chunks).
ONLY_QUEUES: dict[str, Queue] = {"search": Queue.SEARCH, "index": Queue.INDEX}
# One model per process on the embedder (memory, GPU); the reranker waits on the VLM, so several.
DEFAULT_CONCURRENCY: dict[str, int] = {"embedder": 1, "reranker": 4}


def worker_queues(name: WorkerName, only: EmbedderWork | None = None) -> tuple[Queue, ...]:
    """The queues a worker consumes, in the order it polls them (search before index)."""
    if only is None:
        return WORKER_QUEUES[name]
    if name != "embedder":
        raise ValueError(f"--only applies to the embedder; the {name} has one kind of work")
    return (ONLY_QUEUES[only],)


def run_worker(name: WorkerName, concurrency: int | None, loglevel: str, only: EmbedderWork | None = None) -> None:
    from services.common.settings import load_settings
    from services.common.worker_metrics import enable

    # First: the metrics directory must be known before prometheus_client is imported in this process.
    enable(load_settings().worker_metrics_port)
    # Import here: each worker module loads settings and its own dependencies (torch for the embedder).
    if name == "embedder":
        from services.embedder.app import app
    else:
        from services.reranker.app import app
    from services.common.task_logging import install_task_logging

    install_task_logging()
    app.worker_main(
        [
            # JSON logs: no start-up banner, which Celery prints as text (a global option: before the command).
            *(["--quiet"] if json_logs() else []),
            "worker",
            "--queues",
            ",".join(queue.value for queue in worker_queues(name, only)),
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
    from uvicorn.config import LOGGING_CONFIG

    uvicorn.run(
        "services.gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=loglevel.lower(),
        access_log=False,
        # JSON logs: uvicorn's own loggers go through the root handler (logs.py) instead of uvicorn's text set-up.
        log_config=None if json_logs() else LOGGING_CONFIG,
    )
