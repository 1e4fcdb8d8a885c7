from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.queues import TaskName
from services.common.settings import ConfigurationError, Settings, load_settings
from tests.support.processes import REPO, stack_env


@pytest.fixture(autouse=True)
def _fresh_settings() -> None:
    load_settings.cache_clear()


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MMRAG_REDIS_URL", "MMRAG_MODEL", "MMRAG_LLM_MODEL", "MMRAG_MAX_UPLOAD_MB", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.model == "bge-visualized-base-en-v1.5"
    assert settings.llm_model == "gpt-4o"
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert not settings.milvus_is_server


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MMRAG_MODEL", "bge-large"),
        ("MMRAG_DEVICE", "tpu"),
        ("MMRAG_DTYPE", "int8"),
        ("MMRAG_MAX_UPLOAD_MB", "-1"),
        ("MMRAG_REDIS_URL", "localhost:6379"),
        ("MMRAG_JOB_TTL_S", "soon"),
        ("MMRAG_AUTH", "maybe"),
        ("MMRAG_BOOTSTRAP_ADMIN_KEY", "short"),
        ("MMRAG_CORS_ORIGINS", "*"),
        ("MMRAG_CORS_ORIGINS", "https://app.example.com/path"),
        ("MMRAG_MAX_QUEUED_JOBS", "0"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_a_visibility_timeout_shorter_than_a_task_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_VISIBILITY_TIMEOUT_S", "30")
    with pytest.raises(ConfigurationError, match="MMRAG_VISIBILITY_TIMEOUT_S"):
        load_settings()


def test_a_url_means_a_milvus_server() -> None:
    assert Settings(milvus_uri="http://milvus:19530").milvus_is_server
    assert Settings(milvus_uri="/tmp/x.db").resolved_milvus_uri == "/tmp/x.db"


def test_cors_origins_are_a_comma_separated_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_CORS_ORIGINS", "https://app.example.com, http://localhost:5173/")
    assert load_settings().cors_origins == ("https://app.example.com", "http://localhost:5173")


def test_auth_is_unset_cors_off_and_limits_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MMRAG_AUTH", "MMRAG_CORS_ORIGINS", "MMRAG_MAX_QUEUED_JOBS", "MMRAG_BOOTSTRAP_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.auth is None and not settings.auth_required
    assert settings.cors_origins == ()
    assert settings.max_queued_jobs >= 1 and settings.max_active_jobs_per_key >= 1


# What the workers really run with: their Celery apps' task time limits and broker visibility timeout, read in a
# fresh process (the apps read the environment when they are imported).
_WORKER_LIMITS = """
import json
from services.embedder.app import app as embedder
from services.reranker.app import app as reranker
print(json.dumps({
    worker: {
        "visibility_timeout": app.conf.broker_transport_options["visibility_timeout"],
        "tasks": {name: [task.soft_time_limit, task.time_limit] for name, task in app.tasks.items()
                  if name.startswith("mmrag.")},
    }
    for worker, app in (("embedder", embedder), ("reranker", reranker))
}))
"""


@pytest.mark.parametrize(
    "limits",
    [{}, {"MMRAG_INDEX_TIME_LIMIT_S": "3000", "MMRAG_SEARCH_TIME_LIMIT_S": "5", "MMRAG_RERANK_BUDGET_S": "7"}],
    ids=["defaults", "a long index limit"],
)
def test_a_task_is_redelivered_only_after_it_can_no_longer_be_running(tmp_path: Path, limits: dict[str, str]) -> None:
    """Redis hands an unacknowledged task to another worker after the visibility timeout: that must come after the
    hard time limit of every task, or a task still running would run twice."""
    env = stack_env("redis://127.0.0.1:6379/0", tmp_path, **limits)  # the apps are only imported, never connect
    run = subprocess.run(
        [sys.executable, "-c", _WORKER_LIMITS], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    workers = json.loads(run.stdout.strip().splitlines()[-1])
    tasks = {name: limit for worker in workers.values() for name, limit in worker["tasks"].items()}
    assert set(tasks) == {name.value for name in TaskName}
    for worker in workers.values():
        for name, (soft, hard) in worker["tasks"].items():
            assert 0 < soft < hard < worker["visibility_timeout"], (name, soft, hard, worker["visibility_timeout"])
    if limits:
        assert tasks[TaskName.INDEX.value][0] == 3000
        assert tasks[TaskName.SEARCH.value][0] == 5
        assert tasks[TaskName.RERANK.value][0] >= 7  # the VLM budget, plus the panorama around it
