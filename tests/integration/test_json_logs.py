"""MMRAG_LOG_FORMAT=json: every service writes JSON lines; a job's lines carry the id of the request that made it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import gallery, png_bytes, running_stack, wait_for_job

# Celery prints this itself (not through logging) when a worker is told to stop; nothing else may be text.
CELERY_SHUTDOWN_NOTICE = re.compile(r"worker: (Warm|Cold|Soft) shutdown \(MainProcess\)")


def json_lines(path: Path) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or CELERY_SHUTDOWN_NOTICE.fullmatch(line):
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        for field in ("time", "level", "service", "message"):
            assert field in entry, (path.name, line)
        entries.append(entry)
    return entries


def test_json_logs_carry_the_job_and_its_request_id(tmp_path: Path) -> None:
    workers = {"embedder": "embedder", "reranker": "reranker"}
    with running_stack(tmp_path, workers, {"MMRAG_LOG_FORMAT": "json"}) as stack, stack.http() as http:
        images = gallery(3)
        indexed = http.post(
            "/v1/collections/default/images",
            files=[("files", (name, data, "image/png")) for name, data in images],
        )
        assert wait_for_job(http, indexed.json()["id"])["status"] == "succeeded", stack.logs()
        posted = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((1, 2, 3)), "image/png")},
            data={"instruction": "the same in green", "limit": "2"},
            headers={"X-Request-Id": "req-test-42"},
        )
        assert posted.headers["X-Request-Id"] == "req-test-42"
        job_id = posted.json()["id"]
        assert wait_for_job(http, job_id)["status"] == "succeeded", stack.logs()
        assert http.get("/healthz").headers["X-Request-Id"] != "req-test-42"  # a fresh id per request

    logs = {name: json_lines(tmp_path / f"{name}.log") for name in ("gateway", "embedder", "reranker")}
    assert {e["service"] for e in logs["gateway"]} == {"gateway"}
    for worker in ("embedder", "reranker"):
        assert {e["service"] for e in logs[worker]} == {worker}
        about_job = [e for e in logs[worker] if e.get("job_id") == job_id]
        assert about_job, (worker, logs[worker][-10:])
        assert all(e.get("request_id") == "req-test-42" for e in about_job), about_job
        # One line per task with its stage and how long it took.
        timed = [e for e in about_job if "duration_ms" in e]
        assert timed and all(isinstance(e["duration_ms"], float) and e.get("stage") for e in timed), about_job
