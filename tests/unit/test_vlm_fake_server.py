"""The fake VLM as the integration tests run it: a separate process, driven over HTTP only."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.support.processes import Service, python_module, start_on_free_port


@pytest.fixture(scope="module")
def fake_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("fake-vlm")
    service, port = start_on_free_port(
        lambda port: Service(
            "fake-vlm", python_module("tests.support.fake_vlm", "--port", str(port)), dict(os.environ), logs
        ),
        lambda port: httpx.get(f"http://127.0.0.1:{port}/control/health").status_code == 200,
        "the fake VLM",
        timeout_s=20,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


def _chat(url: str, text: str, image: bytes | None, **extra: object) -> httpx.Response:
    content: list[dict[str, object]] = [{"type": "text", "text": text}]
    if image is not None:
        data = base64.b64encode(image).decode()
        content.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}})
    body = {"model": "fake-vlm-1", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_default_scenario_reverses_the_valid_indices_and_records_the_request(fake_url: str) -> None:
    httpx.post(f"{fake_url}/control/reset")
    response = _chat(fake_url, "rank it\nValid indices: 0, 1, 2", _jpeg())
    assert response.status_code == 200
    message = response.json()["choices"][0]["message"]
    assert message["content"].startswith('{"ranked": [2, 1, 0], "best": 2, "reasons": "fake-vlm: item 2')
    [request] = httpx.get(f"{fake_url}/control/requests").json()
    assert request["model"] == "fake-vlm-1" and request["shown"] == [0, 1, 2]
    assert request["image"]["jpeg"] and (request["image"]["width"], request["image"]["height"]) == (40, 30)
    assert "base64" in request["body"]["messages"][0]["content"][1]["image_url"]["url"]  # elided, not dropped


@pytest.mark.parametrize(
    ("text", "image", "problem"),
    [
        ("Valid indices: 0, 1", None, "no image_url"),
        ("Valid indices: 0, 1", b"\x89PNG not a jpeg", "JPEG"),
        ("no list of indices", _jpeg(), "valid indices"),
    ],
)
def test_malformed_requests_get_an_openai_shaped_400(
    fake_url: str, text: str, image: bytes | None, problem: str
) -> None:
    response = _chat(fake_url, text, image)
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_the_expected_instruction_is_checked(fake_url: str) -> None:
    httpx.post(f"{fake_url}/control/scenario", json={"name": "json", "expect_instruction": "in blue"})
    try:
        assert _chat(fake_url, "User instruction: in red\nValid indices: 0, 1", _jpeg()).status_code == 400
        assert _chat(fake_url, "User instruction: in blue\nValid indices: 0, 1", _jpeg()).status_code == 200
    finally:
        httpx.post(f"{fake_url}/control/reset")


def test_unknown_scenarios_are_refused(fake_url: str) -> None:
    response = httpx.post(f"{fake_url}/control/scenario", json={"name": "bogus"})
    assert response.status_code == 400 and "json" in response.json()["scenarios"]


def test_rate_limit_then_ok_sends_retry_after_once(fake_url: str) -> None:
    httpx.post(f"{fake_url}/control/scenario", json={"name": "rate_limit_then_ok"})
    try:
        first = _chat(fake_url, "Valid indices: 0, 1", _jpeg())
        second = _chat(fake_url, "Valid indices: 0, 1", _jpeg())
        assert (first.status_code, first.headers["retry-after"], second.status_code) == (429, "0", 200)
    finally:
        httpx.post(f"{fake_url}/control/reset")
