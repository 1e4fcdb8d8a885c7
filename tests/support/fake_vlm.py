"""A fake vision LLM speaking OpenAI chat completions over real HTTP, with scenarios chosen by the test.

Run it as a process (`python -m tests.support.fake_vlm --port N`, ready when GET /control/health answers 200)
or in-process (`FakeVLM().start()`). Only the standard library: it must run wherever the tests run.

  POST /v1/chat/completions   checks the request like a strict server, then answers per the scenario
  POST /control/scenario      {"name": <scenario>, "sleep_s": float?, "expect_instruction": str?}
  GET  /control/requests      every request so far: body (image data elided) and decoded facts
  GET  /control/concurrency   {"in_flight": n, "max_in_flight": m}: chat requests being answered now, and the most
                              at once since the last reset
  POST /control/reset         forget requests, back to the default scenario; sleeping requests end unanswered
  GET  /control/health        200

It learns which indices were shown from the prompt's "Valid indices: 0, 1, 2" line.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SCENARIOS = (
    "json",  # the default: valid JSON ranking the shown indices in reverse
    "text",  # the tutorial's "Ranked list: [...] Reasons: ..."
    "prose",  # an answer with no list in it
    "dupes",  # duplicate and out-of-range indices
    "rate_limit_then_ok",  # 429 with Retry-After: 0 once, then json
    "error_500",  # always 500
    "sleep",  # sleeps sleep_s, then json
    "refusal",  # message.refusal set, content null
    "reject_schema",  # 400 when response_format is json_schema, json in a ```json fence otherwise
    "quoted",  # prose quoting a JSON ranking, as a model repeating a poisoned title would: must be refused
)
_VALID_INDICES = re.compile(r"Valid indices:\s*([0-9][0-9,\s]*)")


def _image_facts(url: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"data_url": url.startswith("data:"), "jpeg": False, "width": None, "height": None}
    if not url.startswith("data:") or "," not in url:
        return facts
    header, payload = url.split(",", 1)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return facts
    facts["bytes"] = len(data)
    facts["media_type"] = header.removeprefix("data:").split(";")[0]
    if data.startswith(b"\xff\xd8\xff"):
        facts["jpeg"] = True
        try:
            from PIL import Image  # optional: sizes are reported when Pillow is there

            with Image.open(io.BytesIO(data)) as image:
                facts["jpeg"] = image.format == "JPEG"
                facts["width"], facts["height"] = image.size
        except ImportError:
            pass
        except Exception:  # a corrupt JPEG is a fact to report, not a crash
            facts["jpeg"] = False
    return facts


def _describe(body: dict[str, Any]) -> dict[str, Any]:
    """The facts a test asserts on, and the body with the base64 image elided (it can be hundreds of KB)."""
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    elided = copy.deepcopy(body)
    for message in elided.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                image_url = part.get("image_url") or {}
                url = image_url.get("url", "") if isinstance(image_url, dict) else ""
                facts = _image_facts(url)
                images.append(facts)
                if isinstance(image_url, dict) and url:
                    image_url["url"] = f"{url[:40]}…({len(url)} chars)"
    shown: list[int] | None = None
    for text in texts:
        match = _VALID_INDICES.search(text)
        if match:
            shown = [int(token) for token in re.findall(r"\d+", match.group(1))]
    response_format = body.get("response_format")
    return {
        "model": body.get("model"),
        "texts": texts,
        "image": images[0] if images else None,
        "images": images,
        "shown": shown,
        "response_format": response_format.get("type") if isinstance(response_format, dict) else None,
        "body": elided,
    }


def _completion(model: str, content: str | None, refusal: str | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050},
    }


def _error(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0  # not reset: requests still being answered stay counted
        self.interrupt = threading.Event()
        self.reset()

    def reset(self) -> None:
        # Requests still sleeping in an earlier scenario end now, unanswered: none outlives the test that made it.
        self.interrupt.set()
        self.interrupt = threading.Event()
        self.scenario = "json"
        self.sleep_s = 0.0
        self.expect_instruction: str | None = None
        self.requests: list[dict[str, Any]] = []
        self.calls_in_scenario = 0
        self.max_in_flight = 0


def _json_answer(shown: list[int]) -> dict[str, Any]:
    ranked = list(reversed(shown))
    return {"ranked": ranked, "best": ranked[0], "reasons": f"fake-vlm: item {ranked[0]} fits the instruction best"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like real API servers; the openai client pools connections

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        """Silence: the tests read /control/requests, not an access log."""

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing left to tell it

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/control/health":
            self._send(200, {"status": "ok", "scenario": state.scenario})
        elif self.path == "/control/requests":
            with state.lock:
                self._send(200, list(state.requests))
        elif self.path == "/control/concurrency":
            with state.lock:
                self._send(200, {"in_flight": state.in_flight, "max_in_flight": state.max_in_flight})
        else:
            self._send(404, _error(f"no route GET {self.path}", "invalid_request_error"))

    def do_POST(self) -> None:
        state = self.server.state
        try:
            body = self._body()
        except ValueError:
            self._send(400, _error("the body is not JSON", "invalid_request_error"))
            return
        if self.path == "/control/scenario":
            name = body.get("name")
            if name not in SCENARIOS:
                self._send(400, {"error": f"unknown scenario {name!r}", "scenarios": list(SCENARIOS)})
                return
            with state.lock:
                state.scenario = name
                state.sleep_s = float(body.get("sleep_s") or 0.0)
                state.expect_instruction = body.get("expect_instruction")
                state.calls_in_scenario = 0
            self._send(200, {"scenario": name})
        elif self.path == "/control/reset":
            with state.lock:
                state.reset()
            self._send(200, {"scenario": state.scenario})
        elif urlsplit(self.path).path.rstrip("/").endswith("/chat/completions"):  # Azure adds ?api-version=
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                self._chat(body)
            finally:
                with state.lock:
                    state.in_flight -= 1
        else:
            self._send(404, _error(f"no route POST {self.path}", "invalid_request_error"))

    def _chat(self, body: Any) -> None:
        state = self.server.state
        if not isinstance(body, dict):
            self._send(400, _error("the body must be a JSON object", "invalid_request_error"))
            return
        facts = {"path": self.path, **_describe(body)}
        with state.lock:
            state.requests.append(facts)
            scenario, sleep_s, expected = state.scenario, state.sleep_s, state.expect_instruction
            call = state.calls_in_scenario
            state.calls_in_scenario += 1
            interrupt = state.interrupt
        problem = self._check(facts, expected)
        if problem is not None:
            self._send(400, _error(problem, "invalid_request_error"))
            return
        model = str(facts["model"])
        shown: list[int] = facts["shown"]
        if scenario == "rate_limit_then_ok" and call == 0:
            self._send(429, _error("fake-vlm: slow down", "requests", "rate_limit_exceeded"), {"Retry-After": "0"})
        elif scenario == "error_500":
            self._send(500, _error("fake-vlm: internal error", "server_error"))
        elif scenario == "reject_schema" and facts["response_format"] == "json_schema":
            self._send(
                400,
                _error(
                    "fake-vlm: response_format json_schema is not supported",
                    "invalid_request_error",
                    None,
                    "response_format",
                ),
            )
        elif scenario == "refusal":
            self._send(200, _completion(model, None, refusal="fake-vlm: I can't help with that request."))
        else:
            if scenario == "sleep" and interrupt.wait(sleep_s):
                return  # reset, or the server is stopping: drop the request
            self._send(200, _completion(model, self._content(scenario, shown)))

    @staticmethod
    def _check(facts: dict[str, Any], expected_instruction: str | None) -> str | None:
        if not facts["model"]:
            return "fake-vlm: you must provide a model parameter"
        if not any(text.strip() for text in facts["texts"]):
            return "fake-vlm: no text part in the messages"
        if expected_instruction and not any(expected_instruction in text for text in facts["texts"]):
            return f"fake-vlm: no text part contains the instruction {expected_instruction!r}"
        image = facts["image"]
        if image is None:
            return "fake-vlm: no image_url part in the messages"
        if not image["data_url"] or not image["jpeg"]:
            return "fake-vlm: the image_url is not a data: URL holding a JPEG"
        if not facts["shown"]:
            return "fake-vlm: the prompt does not list its valid indices ('Valid indices: 0, 1, 2')"
        return None

    @staticmethod
    def _content(scenario: str, shown: list[int]) -> str:
        answer = _json_answer(shown)
        if scenario == "text":
            return f"Ranked list: [{', '.join(map(str, answer['ranked']))}]\n\nReasons: {answer['reasons']}"
        if scenario == "prose":
            return "fake-vlm: these all look lovely, and I would not dare to put them in any order."
        if scenario == "dupes":
            top, first = shown[-1], shown[0]
            ranked = [top, top, max(shown) + 7, -1, first, first]
            return json.dumps({"ranked": ranked, "best": top, "reasons": f"fake-vlm: item {top} despite the noise"})
        if scenario == "reject_schema":
            return f"```json\n{json.dumps(answer)}\n```"
        if scenario == "quoted":
            return f"One item's title says to answer {json.dumps(answer)}, but I would rather not rank them."
        return json.dumps(answer)


class FakeVLM:
    """The fake in a background thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.state = _State()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/control"

    def start(self) -> FakeVLM:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-vlm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.state.interrupt.set()
        if self._thread is not None:  # shutdown() waits for a serve_forever loop, so only for a started one
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeVLM:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # In-process shortcuts for the control endpoints.
    def scenario(self, name: str, sleep_s: float = 0.0, expect_instruction: str | None = None) -> None:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}")
        state = self._server.state
        with state.lock:
            state.scenario, state.sleep_s, state.expect_instruction = name, sleep_s, expect_instruction
            state.calls_in_scenario = 0

    def reset(self) -> None:
        with self._server.state.lock:
            self._server.state.reset()

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._server.state.lock:
            return list(self._server.state.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = _Server((args.host, args.port), _Handler)
    server.state = _State()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
