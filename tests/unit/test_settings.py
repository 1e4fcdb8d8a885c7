from __future__ import annotations

import pytest

from services.common.settings import ConfigurationError, Settings, load_settings


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


def test_visibility_timeout_outlasts_every_task() -> None:
    settings = Settings()
    assert settings.effective_visibility_timeout_s > settings.longest_task_s


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
