"""The OpenAPI document as a contract that generated clients rely on.

Each operation lists every status it can answer, and each error answer has one schema, ProblemDetails. What a
route answers is declared where the answer comes from:
- the route's decorator, `responses=problems({...})`: what its own code raises (404, 413, a backlog's 503, ...);
- its router, `responses=AUTH_RESPONSES` (auth.py): 401/403/429 of every route behind a key;
- `APP_RESPONSES` here, added to every route by app.py: what the app-wide handlers answer (500 for anything
  unexpected; 503 while Redis or the broker is down, install_dependency_handlers).
FastAPI documents a request that fails validation as `422 HTTPValidationError`; the gateway answers it
`400 application/problem+json` (problems.py), and `contract_document` says so instead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.common.jobs import CollectionDropResult, DeleteResult, IndexResult, SearchResult
from services.gateway.problems import PROBLEM_SCHEMA_NAME, ProblemDetails, problem_doc

REF_PREFIX = "#/components/schemas/"
Responses = dict[int | str, dict[str, Any]]

# What the app-wide exception handlers answer, on every route (the health routes included: a bug is a 500 there too).
SERVER_ERROR_RESPONSES: Responses = {500: problem_doc("An unexpected error; it has been logged (type `internal`)")}
DEPENDENCY_RESPONSES: Responses = {
    503: problem_doc("Redis or the job queue is unavailable (type `unavailable`, with `Retry-After`): retry later")
}
APP_RESPONSES: Responses = {**DEPENDENCY_RESPONSES, **SERVER_ERROR_RESPONSES}

# The 400 that stands for FastAPI's 422 on any route whose parameters or body it validates.
VALIDATION_RESPONSE = problem_doc("A parameter or the body is not valid (type `invalid-request`; `errors` names each)")
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

# What a finished job's `result` holds, one model per kind of job (the job record stores it as a plain object).
JOB_RESULT_MODELS: tuple[type[BaseModel], ...] = (SearchResult, IndexResult, DeleteResult, CollectionDropResult)


def problems(descriptions: Mapping[int, str]) -> Responses:
    """`responses=` entries for a route's own error answers: status → when it happens."""
    return {status: problem_doc(description) for status, description in descriptions.items()}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A reference to `model` as a named component, for a request body in openapi_extra (contract_document moves
    the definitions it carries to the components): clients get a type of that name."""
    schema = model.model_json_schema(ref_template=REF_PREFIX + "{model}")
    nested = schema.pop("$defs", {})
    return {"$ref": REF_PREFIX + model.__name__, "$defs": {**nested, model.__name__: schema}}


def binary_content(*media_types: str) -> dict[str, Any]:
    """The `content` of an answer that is a file (an image), for a 200 entry of `responses=`."""
    return {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in media_types}


def _without_null(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`X | None = None` as a form field: the field is simply left out, so the schema is X's."""
    options = [option for option in schema.get("anyOf", []) if option != {"type": "null"}]
    plain = {key: value for key, value in schema.items() if key not in ("anyOf", "default", "title")}
    if len(options) == 1 and "anyOf" in schema:
        return {**options[0], **plain}
    return {**plain, **({"default": schema["default"]} if schema.get("default") is not None else {})}


def form_schema(
    model: type[BaseModel], *, files: Mapping[str, str], json_fields: Collection[str] = ()
) -> dict[str, Any]:
    """The multipart form that carries the same fields as `model` does as JSON, derived from it so the two never
    drift: `files` maps a JSON field to the file part that replaces it, `json_fields` are sent as JSON text."""
    schema = model.model_json_schema(ref_template=REF_PREFIX + "{model}")
    properties: dict[str, Any] = {}
    for name, field in schema["properties"].items():
        description = field.get("description", name)
        if name in files:
            properties[files[name]] = {
                "type": "string",
                "format": "binary",
                "description": f"a file part: what `{name}` holds in the JSON body, as raw bytes",
            }
        elif name in json_fields:
            properties[name] = {"type": "string", "description": f"{description}, as a JSON object"}
        else:
            properties[name] = _without_null(field)
    return {"type": "object", "properties": properties}


def operation_id(route: APIRoute) -> str:
    """The route function's name (`create_search`, `get_job`): what generated clients call the operation."""
    return route.name


def _add_models(components: dict[str, Any], models: tuple[type[BaseModel], ...]) -> None:
    _, schema = models_json_schema([(model, "serialization") for model in models], ref_template=REF_PREFIX + "{model}")
    for name, definition in schema.get("$defs", {}).items():
        components.setdefault(name, definition)


def _add_problem_schema(components: dict[str, Any]) -> None:
    """The error answers refer to ProblemDetails by name (problems.problem_doc): define it, with ProblemType."""
    _add_models(components, (ProblemDetails,))


def _type_job_results(components: dict[str, Any]) -> None:
    """Job.result and Job.error are plain objects in the model; the document says which shapes they take."""
    _add_models(components, JOB_RESULT_MODELS)
    job = components.get("Job")
    if job is None:
        return
    properties = job["properties"]
    results = [{"$ref": REF_PREFIX + model.__name__} for model in JOB_RESULT_MODELS]
    properties["result"] = {
        "anyOf": [*results, {"type": "null"}],
        "description": "the outcome of a succeeded job, by kind (search, index, delete)",
    }
    properties["error"] = {
        "anyOf": [{"$ref": REF_PREFIX + PROBLEM_SCHEMA_NAME}, {"type": "null"}],
        "description": "why a failed (or canceled) job ended: the same problem object as an HTTP error",
    }


def _is_fastapi_validation_response(response: Mapping[str, Any]) -> bool:
    schemas = [media.get("schema", {}) for media in response.get("content", {}).values()]
    return any(schema.get("$ref") == REF_PREFIX + "HTTPValidationError" for schema in schemas)


def _validation_as_problem(document: dict[str, Any]) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses and _is_fastapi_validation_response(responses["422"]):
                del responses["422"]
                responses.setdefault("400", VALIDATION_RESPONSE)
    components = document.get("components", {}).get("schemas", {})
    for name in FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)


def _hoist_defs(node: Any, components: dict[str, Any]) -> Any:
    """A model's schema embedded in a route (openapi_extra) carries its nested models in `$defs`, which nothing in
    the document can point to: move them to the components and point there."""
    if isinstance(node, dict):
        for name, definition in node.pop("$defs", {}).items():
            components.setdefault(name, _hoist_defs(definition, components))
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = REF_PREFIX + ref.removeprefix("#/$defs/")
        for value in node.values():
            _hoist_defs(value, components)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, components)
    return node


def _sort_responses(document: dict[str, Any]) -> None:
    # FastAPI appends the responses it adds after the declared ones; in status order the document reads better.
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if "responses" in operation:
                operation["responses"] = dict(sorted(operation["responses"].items()))


def contract_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for `app`, made into the gateway's contract (cached on the app like FastAPI's own)."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        _add_problem_schema(components)
        _type_job_results(components)
        _validation_as_problem(document)
        _hoist_defs(document.get("paths", {}), components)
        _sort_responses(document)
        app.openapi_schema = document
    return app.openapi_schema
