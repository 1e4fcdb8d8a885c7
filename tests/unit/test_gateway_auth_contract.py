"""What the gateway promises about keys without running it: every /v1 route asks for one, the OpenAPI document
says so, the open routes stay open, and the start-up rule for binding without keys."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from fastapi.routing import APIRoute

import services.gateway.routes as routes_package
from services.common.settings import ConfigurationError, Settings
from services.gateway.app import create_app
from services.gateway.auth import authorize
from services.gateway.exposure import check_exposure, is_loopback

OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/", "/metrics"}


def _app_routes() -> list[APIRoute]:
    """Every route of every module in services/gateway/routes (a new module is checked without listing it)."""
    found: list[APIRoute] = []
    for module_info in pkgutil.iter_modules(routes_package.__path__):
        module = importlib.import_module(f"{routes_package.__name__}.{module_info.name}")
        router = getattr(module, "router", None)
        if router is not None:
            found += [route for route in router.routes if isinstance(route, APIRoute)]
    return found


def _depends_on_authorize(route: APIRoute) -> bool:
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        if dependant.call is authorize:
            return True
        pending.extend(dependant.dependencies)
    return False


def test_every_v1_route_asks_for_a_key_and_no_open_route_does() -> None:
    routes = _app_routes()
    api = [r for r in routes if r.path.startswith("/v1/")]
    assert len(api) >= 10
    assert [r.path for r in api if not _depends_on_authorize(r)] == []
    assert [r.path for r in routes if r.path in OPEN_PATHS and _depends_on_authorize(r)] == []


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    document: dict[str, Any] = create_app(Settings()).openapi()
    return document


def test_the_openapi_document_declares_the_bearer_scheme_and_the_api_key_header(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["HTTPBearer"].items()
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= schemes["APIKeyHeader"].items()


def test_every_v1_operation_lists_its_security_and_the_401_403_429_problems(openapi: dict[str, Any]) -> None:
    problem = {"$ref": "#/components/schemas/ProblemDetails"}
    checked = 0
    for path, operations in openapi["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            names = {name for requirement in operation["security"] for name in requirement}
            assert names == {"HTTPBearer", "APIKeyHeader"}, (method, path)
            for status in ("401", "403", "429"):
                content = operation["responses"][status]["content"]
                assert content == {"application/problem+json": {"schema": problem}}, (method, path, status)
            checked += 1
    assert checked >= 10
    schema = openapi["components"]["schemas"]["ProblemDetails"]
    assert set(schema["required"]) == {"type", "title", "status", "detail"}
    assert "forbidden" in openapi["components"]["schemas"]["ProblemType"]["enum"]


def test_job_creating_operations_document_the_backpressure_503(openapi: dict[str, Any]) -> None:
    assert "503" in openapi["paths"]["/v1/searches"]["post"]["responses"]
    assert "503" in openapi["paths"]["/v1/collections/{name}/images"]["post"]["responses"]


def test_open_operations_need_no_key(openapi: dict[str, Any]) -> None:
    for path in ("/healthz", "/readyz"):
        assert "security" not in openapi["paths"][path]["get"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gateway.internal", "192.168.1.2"])
def test_other_addresses_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_auth_unset_is_off_on_loopback_and_refuses_to_start_elsewhere() -> None:
    check_exposure(Settings(), "127.0.0.1")
    with pytest.raises(ConfigurationError, match="MMRAG_AUTH=required"):
        check_exposure(Settings(), "0.0.0.0")


def test_auth_off_on_a_public_address_starts_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    check_exposure(Settings(auth="off"), "0.0.0.0")
    assert "MMRAG_AUTH=off on 0.0.0.0" in caplog.text
    check_exposure(Settings(auth="required"), "0.0.0.0")
