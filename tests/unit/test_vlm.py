"""The VLM client: endpoints (OpenAI, Azure, keyless local servers), Retry-After, and the hard deadline."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from email.utils import formatdate

import httpx2
import openai
import pytest
from PIL import Image
from pydantic import SecretStr

from services.common.settings import Settings
from services.reranker import vlm
from services.reranker.prompt import Prompt, build_prompt
from tests.support.fake_vlm import FakeVLM


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVLM]:
    with FakeVLM() as server:
        yield server


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (10, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _rate_limited(headers: dict[str, str]) -> openai.RateLimitError:
    request = httpx2.Request("POST", "http://vlm.test/v1/chat/completions")
    return openai.RateLimitError(
        "slow down", response=httpx2.Response(429, headers=headers, request=request), body=None
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0"}, 0.0),
        ({}, None),
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_is_read_in_ms_or_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert vlm._retry_after_s(_rate_limited(headers)) == expected


def test_retry_after_as_an_http_date() -> None:
    later = formatdate(time.time() + 30, usegmt=True)
    delay = vlm._retry_after_s(_rate_limited({"retry-after": later}))
    assert delay is not None and 28 <= delay <= 31


def test_a_request_that_outlives_the_deadline_is_abandoned_on_time() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        vlm._before(started + 0.2, lambda: time.sleep(30))
    # 3 s of slack for a loaded machine, and still far from the 30 s the call would take.
    assert time.monotonic() - started < 0.2 + 3


def test_a_local_server_needs_no_api_key(fake: FakeVLM) -> None:
    settings = Settings(openai_api_key=None, llm_base_url=fake.base_url, llm_model="llava")
    assert settings.vlm_configured
    reply = vlm.ask(build_prompt("x", [{}, {}]), _jpeg(), settings=settings, deadline=time.monotonic() + 5)
    assert reply.structured and '"ranked": [1, 0]' in reply.content
    assert vlm.client_for(settings).api_key == vlm.PLACEHOLDER_API_KEY


def test_azure_openai_is_used_when_an_api_version_is_set(fake: FakeVLM) -> None:
    settings = Settings(
        openai_api_key=SecretStr("azure-key"),
        llm_base_url=fake.base_url.removesuffix("/v1"),
        llm_api_version="2024-10-21",
        llm_model="my-gpt4o-deployment",
    )
    assert isinstance(vlm.client_for(settings), openai.AzureOpenAI)
    fake.reset()
    reply = vlm.ask(build_prompt(None, [{}, {}, {}]), _jpeg(), settings=settings, deadline=time.monotonic() + 5)
    assert '"ranked": [2, 1, 0]' in reply.content
    [request] = fake.requests
    assert request["path"] == "/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21"


def test_azure_without_an_endpoint_is_a_vlm_error() -> None:
    settings = Settings(openai_api_key=SecretStr("k"), llm_base_url=None, llm_api_version="2024-10-21")
    with pytest.raises(vlm.VlmError, match="MMRAG_LLM_BASE_URL"):
        vlm.ask(Prompt("system", "prompt"), _jpeg(), settings=settings, deadline=time.monotonic() + 1)


def test_retry_after_zero_is_honoured_at_once(fake: FakeVLM, caplog: pytest.LogCaptureFixture) -> None:
    fake.reset()
    fake.scenario("rate_limit_then_ok")
    settings = Settings(openai_api_key=SecretStr("k"), llm_base_url=fake.base_url, llm_model="m")
    with caplog.at_level(logging.INFO, logger=vlm.logger.name):
        reply = vlm.ask(build_prompt(None, [{}, {}]), _jpeg(), settings=settings, deadline=time.monotonic() + 5)
    assert reply.attempts == 2
    # The server's Retry-After: 0 set the wait, not the back-off (at least 0.25 s before a first retry).
    assert "retrying in 0.00 s" in caplog.text


def test_a_retry_after_beyond_the_budget_fails_at_once(fake: FakeVLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 asking for more time than is left ends the call now instead of sleeping past the deadline."""
    monkeypatch.setattr(vlm, "_retry_after_s", lambda error: 30.0)
    fake.reset()
    fake.scenario("rate_limit_then_ok")
    settings = Settings(openai_api_key=SecretStr("k"), llm_base_url=fake.base_url, llm_model="m")
    started = time.monotonic()
    with pytest.raises(vlm.VlmError, match=r"rate limited .*HTTP 429.*no rerank budget left"):
        vlm.ask(build_prompt(None, [{}, {}]), _jpeg(), settings=settings, deadline=started + 5)
    # Generous for a loaded machine, and still far from the 5 s deadline or the 30 s the server asked for.
    assert time.monotonic() - started < 3 and len(fake.requests) == 1


def test_a_client_error_is_not_retried(fake: FakeVLM, caplog: pytest.LogCaptureFixture) -> None:
    fake.reset()
    settings = Settings(openai_api_key=SecretStr("k"), llm_base_url=fake.base_url, llm_model="m")
    with pytest.raises(vlm.VlmError, match="HTTP 400") as raised:
        vlm.ask(Prompt("system", "a prompt without indices"), _jpeg(), settings=settings, deadline=time.monotonic() + 5)
    # The provider's words reach the log, never the reason a client reads.
    assert "fake-vlm" not in str(raised.value)
    assert "fake-vlm: the prompt does not list its valid indices" in caplog.text
    # Rejected once with the schema, once more in plain text (the schema fallback), and never retried after.
    assert [r["response_format"] for r in fake.requests] == ["json_schema", None]
