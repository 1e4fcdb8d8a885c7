"""Logging set-up shared by every process, and a logger adapter that stamps the job id."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
    # One INFO line per HTTP request (readiness polls, VLM calls) drowns the job log; failures still show.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[job {self.extra['job_id'] if self.extra else '?'}] {msg}", kwargs


def job_logger(logger: logging.Logger, job_id: str) -> JobLogger:
    return JobLogger(logger, {"job_id": job_id})
