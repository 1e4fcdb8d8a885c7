"""The OpenAPI document as a contract, without running the gateway: every operation lists its error answers with the
one problem schema and no FastAPI 422; request bodies and job results are typed; and the checker that holds the
integration tests' answers to the document (tests/support/contract.py) catches what it should."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from services.common.errors import ProblemType, problem
from services.gateway.api_contract import JOB_RESULT_MODELS
from services.gateway.search_request import SearchRequestBody
from tests.support.contract import Answer, check_answer, gateway_document, violations

PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return gateway_document()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def test_the_document_covers_the_api(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    found = {(method, path) for method, path, _ in _operations(document)}
    assert {("POST", "/v1/searches"), ("GET", "/v1/jobs/{job_id}"), ("GET", "/readyz")} <= found
    assert len(found) >= 15


def test_every_error_answer_is_a_problem_and_fastapi_s_422_is_gone(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        errors = {status: entry for status, entry in responses.items() if status[0] in "45"}
        assert any(status.startswith("4") for status in errors) or path in ("/healthz",), (method, path)
        for status, entry in errors.items():
            # A 422 too: the invalid-image problem of a search, never FastAPI's validation error.
            assert entry["content"] == PROBLEM_CONTENT, (method, path, status)
            assert entry["description"] not in ("", "Validation Error"), (method, path, status)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert "HTTPValidationError" not in json.dumps(document)


def test_every_operation_lists_what_the_app_wide_handlers_answer(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        assert "500" in responses, (method, path)
        if path.startswith("/v1/"):
            # Redis down (every /v1 route reads it), and the answers of the key check.
            assert {"401", "403", "429", "503"} <= responses.keys(), (method, path)
        if operation.get("parameters") or "requestBody" in operation:
            assert "400" in responses, (method, path)
        assert any(status.startswith("2") for status in responses), (method, path)


def test_routes_document_their_own_answers(document: dict[str, Any]) -> None:
    def statuses(method: str, path: str) -> set[str]:
        return set(document["paths"][path][method]["responses"])

    assert {"202", "400", "404", "413", "422", "503"} <= statuses("post", "/v1/searches")
    assert {"202", "400", "413", "503"} <= statuses("post", "/v1/collections/{name}/images")
    for path in ("/v1/jobs/{job_id}", "/v1/jobs/{job_id}/panorama", "/v1/collections/{name}/images/{image_id}"):
        assert "404" in statuses("get", path), path
    assert "503" in statuses("get", "/readyz")
    assert "503" not in statuses("get", "/healthz")


def test_the_problem_schema_is_rfc_9457_with_the_closed_set_of_types(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    problem_schema = schemas["ProblemDetails"]
    assert set(problem_schema["required"]) == {"type", "title", "status", "detail"}
    assert {"type", "title", "status", "detail", "instance"} <= problem_schema["properties"].keys()
    assert problem_schema["properties"]["type"] == {"$ref": "#/components/schemas/ProblemType"}
    assert set(schemas["ProblemType"]["enum"]) == {member.value for member in ProblemType}
    validator = Draft202012Validator({"$ref": "#/components/schemas/ProblemDetails", **document})
    for problem_type in ProblemType:
        validator.validate(problem(problem_type, "what to fix", instance="/v1/searches"))
    assert not validator.is_valid({**problem(ProblemType.NOT_FOUND, "x"), "type": "no-such-type"})


def test_every_reference_resolves_and_operation_ids_are_unique(document: dict[str, Any]) -> None:
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"], ref
    assert "$defs" not in json.dumps(document)
    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(ids) == len(set(ids))
    assert "create_search" in ids


def test_search_request_bodies_carry_every_field_of_the_json_body(document: dict[str, Any]) -> None:
    content = document["paths"]["/v1/searches"]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/SearchRequestBody"}
    form = content["multipart/form-data"]["schema"]["properties"]
    json_fields = set(SearchRequestBody.model_fields)
    assert set(form) == json_fields - {"image_base64"} | {"image"}
    assert form["image"] == {**form["image"], "type": "string", "format": "binary"}
    assert form["filter"]["type"] == "string"
    upload = document["paths"]["/v1/collections/{name}/images"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["properties"]["files"]["items"]["format"] == "binary"


def test_job_results_and_errors_are_typed(document: dict[str, Any]) -> None:
    job = document["components"]["schemas"]["Job"]["properties"]
    results = {option.get("$ref", "").rsplit("/", 1)[-1] for option in job["result"]["anyOf"]}
    assert {model.__name__ for model in JOB_RESULT_MODELS} <= results
    assert {"$ref": "#/components/schemas/ProblemDetails"} in job["error"]["anyOf"]


# ---- the checker of recorded answers ---------------------------------------------------------------------------


def _problem_answer(method: str, path: str, status: int, problem_type: ProblemType) -> Answer:
    body = {**problem(problem_type, "what to fix", instance=path), "status": status}
    return Answer(method, path, status, "application/problem+json", json.dumps(body).encode())


def test_the_checker_accepts_documented_answers(document: dict[str, Any]) -> None:
    job = {
        "id": "0" * 32,
        "kind": "search",
        "status": "queued",
        "stage": "queued",
        "created_at": "2026-12-06T10:00:00Z",
        "updated_at": "2026-12-06T10:00:00Z",
    }
    answers = [
        Answer("POST", "/v1/searches", 202, "application/json", json.dumps(job).encode()),
        _problem_answer("GET", "/v1/jobs/" + "a" * 32, 404, ProblemType.NOT_FOUND),
        Answer("GET", "/v1/collections/default/images/" + "b" * 64, 200, "image/png", b"\x89PNG"),
        Answer("GET", "/nothing-here", 404, "application/problem+json", b"{}"),
        Answer("OPTIONS", "/v1/searches", 200, "text/plain", b"OK"),
    ]
    assert violations(document, answers) == []


def test_the_checker_names_an_undocumented_status(document: dict[str, Any]) -> None:
    answer = _problem_answer("GET", "/v1/collections", 409, ProblemType.INVALID_REQUEST)
    found = check_answer(document, answer)
    assert len(found) == 1
    assert "GET /v1/collections → 409" in found[0]
    assert "not documented" in found[0]


def test_the_checker_names_bodies_outside_the_schema(document: dict[str, Any]) -> None:
    bad_type = Answer(
        "GET",
        "/v1/jobs/" + "a" * 32,
        404,
        "application/problem+json",
        json.dumps({"type": "gone", "title": "t", "status": 404, "detail": "d"}).encode(),
    )
    assert any("/v1/jobs/{job_id} → 404" in v and "/type" in v for v in check_answer(document, bad_type))
    says_400 = json.dumps(problem(ProblemType.INVALID_REQUEST, "d")).encode()
    wrong_status = Answer("GET", "/v1/jobs/" + "a" * 32, 404, "application/problem+json", says_400)
    assert any("status 400" in v for v in check_answer(document, wrong_status))
    not_a_job = Answer("GET", "/v1/jobs/" + "a" * 32, 200, "application/json", b'{"id": 1}')
    assert any("body does not match" in v for v in check_answer(document, not_a_job))
    as_json = Answer("GET", "/v1/jobs/" + "a" * 32, 404, "application/json", b"{}")
    assert any("media type 'application/json'" in v for v in check_answer(document, as_json))


def test_the_checker_names_an_operation_or_path_missing_from_the_document(document: dict[str, Any]) -> None:
    assert check_answer(document, Answer("PUT", "/v1/keys", 200, "application/json", b"{}"))
    assert check_answer(document, Answer("GET", "/v1/unlisted", 200, "application/json", b"{}"))
    assert not check_answer(document, Answer("PUT", "/v1/keys", 405, "application/problem+json", b"{}"))
