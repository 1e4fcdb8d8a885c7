"""Logging set-up shared by every process, and a logger adapter that stamps the job id.

`MMRAG_LOG_FORMAT=json` makes every service write one JSON object per line: time, level, service, logger,
message, and where known job_id, request_id (of the HTTP request that created the job), stage and duration_ms.
The job and request ids also come from context variables: the gateway sets the request id per request
(gateway/metrics.py), a worker sets both per task (task_logging.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
LOG_FORMAT_ENV = "MMRAG_LOG_FORMAT"

# The request being served (gateway) or the request that created the job being worked on (workers).
request_id_var: ContextVar[str | None] = ContextVar("mmrag_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("mmrag_job_id", default=None)
stage_var: ContextVar[str | None] = ContextVar("mmrag_stage", default=None)

_service = "mmrag"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; fields that are not known are left out rather than null."""

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None) or job_id_var.get()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": _service,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": job_id,
            # A batch task logs about several jobs: the request id belongs to the job the task was sent for.
            "request_id": getattr(record, "request_id", None)
            or (request_id_var.get() if job_id in (None, job_id_var.get()) else None),
            "stage": getattr(record, "stage", None) or stage_var.get(),
            "duration_ms": getattr(record, "duration_ms", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in entry.items() if v is not None}, default=str)


def json_logs() -> bool:
    return os.environ.get(LOG_FORMAT_ENV, "text").strip().lower() == "json"


def configure_logging(level: str = "INFO", service: str | None = None) -> None:
    global _service
    if service:
        _service = service
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_logs() else logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Library warnings (warnings.warn) would otherwise reach stderr as text.
    logging.captureWarnings(json_logs())
    # One INFO line per HTTP request (readiness polls, VLM calls) drowns the job log; failures still show.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def ensure_logging(service: str) -> None:
    """Configure a process that was spawned without its parent's set-up (uvicorn's worker processes)."""
    if not logging.getLogger().handlers:
        configure_logging(os.environ.get("MMRAG_LOG_LEVEL", "INFO"), service)


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        job_id = self.extra["job_id"] if self.extra else None
        kwargs["extra"] = {"job_id": job_id, **kwargs.get("extra", {})}
        return f"[job {job_id or '?'}] {msg}", kwargs


def job_logger(logger: logging.Logger, job_id: str) -> JobLogger:
    return JobLogger(logger, {"job_id": job_id})
