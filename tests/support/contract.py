"""Holding the gateway to its OpenAPI document: every answer the tests see is recorded and checked against it.

Test clients of the gateway (Stack.http(), the auth tests' clients, the generated client) carry RESPONSES.record as
an httpx response hook. At the end of the session (tests/integration/conftest.py) `violations` checks each recorded
answer: its operation is in the document, its status is listed for that operation, its media type is one the
entry lists, and a JSON body is valid against the entry's schema (problem bodies also repeat the HTTP status).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
from jsonschema import Draft202012Validator

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Answered by the routing or the middleware before any operation: not an operation's answer.
_NOT_AN_OPERATION = {404, 405}


@dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int
    media_type: str
    body: bytes


class ResponseLog:
    """The gateway's answers the tests received, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: list[Answer] = []

    def record(self, response: httpx.Response) -> None:
        response.read()  # a response hook sees the answer before its body is read
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        request = response.request
        answer = Answer(request.method, request.url.path, response.status_code, media_type, response.content)
        with self._lock:
            self._answers.append(answer)

    def drain(self) -> list[Answer]:
        with self._lock:
            answers, self._answers = self._answers, []
        return answers

    def hooks(self) -> dict[str, list[Any]]:
        return {"response": [self.record]}


RESPONSES = ResponseLog()


@cache
def gateway_document() -> dict[str, Any]:
    """The gateway's OpenAPI document, as /openapi.json serves it (built in this process from the same code)."""
    from services.common.settings import Settings
    from services.gateway.app import create_app

    document: dict[str, Any] = create_app(Settings()).openapi()
    return document


def gateway_client(base_url: str, **options: Any) -> httpx.Client:
    """An httpx client of the gateway whose answers are checked against the OpenAPI document."""
    options.setdefault("timeout", 30)
    return httpx.Client(base_url=base_url, event_hooks=RESPONSES.hooks(), **options)


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts))


@cache
def _patterns(paths: tuple[str, ...]) -> list[tuple[str, re.Pattern[str]]]:
    # Literal segments first: `/v1/keys` must not be taken for a template such as `/v1/{x}`.
    ordered = sorted(paths, key=lambda t: (t.count("{"), -len(t)))
    return [(template, _template_pattern(template)) for template in ordered]


def route_template(document: Mapping[str, Any], path: str) -> str | None:
    for template, pattern in _patterns(tuple(document.get("paths", {}))):
        if pattern.fullmatch(path):
            return template
    return None


def _media_matches(documented: str, actual: str) -> bool:
    kind, _, subtype = documented.partition("/")
    return documented == actual or (subtype == "*" and actual.startswith(kind + "/"))


def _validator(document: Mapping[str, Any], schema: Mapping[str, Any]) -> Draft202012Validator:
    # `#/components/...` references resolve against the root of the schema validated: give it the components.
    return Draft202012Validator({**schema, "components": document.get("components", {})})


def _short(message: str, limit: int = 160) -> str:
    # jsonschema quotes the whole failing value: a job body is kilobytes. Enough to tell what it was.
    return message if len(message) <= limit else message[:limit] + "…"


def _check_body(document: Mapping[str, Any], where: str, answer: Answer, schema: Mapping[str, Any]) -> list[str]:
    try:
        body = json.loads(answer.body)
    except ValueError:
        return [f"{where}: the {answer.media_type} body is not JSON: {answer.body[:200]!r}"]
    errors = sorted(_validator(document, schema).iter_errors(body), key=lambda e: list(e.absolute_path))
    found = [
        f"{where}: body does not match the schema at /{'/'.join(map(str, e.absolute_path))}: {_short(e.message)}"
        for e in errors
    ]
    if answer.media_type == PROBLEM_MEDIA_TYPE and isinstance(body, dict) and body.get("status") != answer.status:
        found.append(f"{where}: the problem says status {body.get('status')!r}")
    return found[:5]


def check_answer(document: Mapping[str, Any], answer: Answer) -> list[str]:
    """What is wrong with one answer, as the document sees it (nothing: an empty list)."""
    method = answer.method.lower()
    if method in ("options", "head"):
        return []  # CORS preflights and HEAD are answered outside the operations
    template = route_template(document, answer.path)
    if template is None:
        if answer.path.startswith("/v1/") and answer.status not in _NOT_AN_OPERATION | {307, 308}:
            return [f"{answer.method} {answer.path} answered {answer.status}, but no path of the document matches it"]
        return []
    where = f"{answer.method} {template} → {answer.status}"
    operation = document["paths"][template].get(method)
    if operation is None:
        return [] if answer.status == 405 else [f"{where}: the document has no {answer.method} operation here"]
    responses = operation.get("responses", {})
    entry = responses.get(str(answer.status)) or responses.get(f"{answer.status // 100}XX") or responses.get("default")
    if entry is None:
        listed = ", ".join(responses)
        return [f"{where}: status {answer.status} is not documented (documented: {listed})"]
    content: Mapping[str, Any] = entry.get("content", {})
    if not content:
        return [f"{where}: documented without a body, but answered {len(answer.body)} bytes"] if answer.body else []
    matching = [media for media in content if _media_matches(media, answer.media_type)]
    if not matching:
        return [f"{where}: media type {answer.media_type!r} is not documented (documented: {', '.join(content)})"]
    schema = content[matching[0]].get("schema")
    if schema and (answer.media_type == "application/json" or answer.media_type.endswith("+json")):
        return _check_body(document, where, answer, schema)
    return []


def violations(document: Mapping[str, Any], answers: Iterable[Answer]) -> list[str]:
    """Every way the answers break the document, each named once (the first answer that showed it)."""
    found: dict[str, None] = {}
    for answer in answers:
        for problem in check_answer(document, answer):
            found.setdefault(problem, None)
    return list(found)
