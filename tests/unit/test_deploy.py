"""The deployment files agree with the code: they validate, lint clean, and name only what the code reads.

Static checks only (no Docker engine): the compose specification's schema (check-jsonschema's vendored copy),
hadolint, and the Kubernetes manifests parsed and compared with compose and with `Settings`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices
from typer.testing import CliRunner

from services.cli.health import health_app
from services.cli.services import WORKER_QUEUES
from services.common.queues import Queue
from services.common.settings import ENV_PREFIX, Settings, load_settings
from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = REPO / "docker-compose.yml"
CPU_OVERLAY = REPO / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER = REPO / "deploy" / "docker"
K8S = REPO / "deploy" / "k8s"
SECRETS_EXAMPLE = K8S / "secrets.env.example"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SERVICES = ("gateway", "embedder", "reranker")
WORKERS = ("embedder", "reranker")

# Variables outside Settings that compose or Kubernetes may give an mmrag container: the Hugging Face cache, and
# the Redis password that Kubernetes puts into MMRAG_REDIS_URL.
NON_SETTINGS_ENV = {"HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "REDIS_PASSWORD"}
# .env.example may also set what only docker compose itself reads.
COMPOSE_ONLY_ENV = {"COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}
# The task time limits: their one source is the Settings defaults (the visibility timeout derives from them).
RELIABILITY_FIELDS = ("search_time_limit_s", "index_time_limit_s", "rerank_budget_s", "visibility_timeout_s")


def env_names(field_name: str) -> set[str]:
    """The environment variables pydantic-settings reads for one Settings field."""
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return {choice for choice in alias.choices if isinstance(choice, str)}
    if isinstance(alias, str):
        return {alias}
    return {f"{ENV_PREFIX}{field_name}".upper()}


SETTINGS_ENV = set().union(*(env_names(name) for name in Settings.model_fields))
RELIABILITY_ENV = set().union(*(env_names(name) for name in RELIABILITY_FIELDS))


class _Reset:
    """compose's `!reset` tag: the key is removed from what the file overrides."""


RESET = _Reset()


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda _loader, _node: RESET)


def load_compose(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=ComposeLoader)
    return document


def merge(base: Any, override: Any) -> Any:
    """compose's merge as far as these files use it: mappings merge key by key, `!reset` removes, rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            else:
                merged[key] = merge(merged[key], value) if key in merged else value
        return merged
    return override


def with_defaults(text: str) -> str:
    """`${NAME:-default}` interpolated with its default, as compose does when NAME is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def k8s_documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}"
    return matches[0]


def pod_containers(kind: str, name: str) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = k8s_object(kind, name)["spec"]["template"]["spec"]["containers"]
    return containers


def seconds(duration: str) -> float:
    """A compose duration such as `16m`, `90s` or `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unparsed duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def longest_task_s() -> float:
    return Settings.model_construct().longest_task_s


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def compose_cpu(compose: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = merge(compose, load_compose(CPU_OVERLAY))
    return merged


# --- compose ---------------------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_merged_with_the_cpu_overlay_validates(compose_cpu: dict[str, Any], tmp_path: Path) -> None:
    merged = tmp_path / "compose.cpu-merged.yml"
    merged.write_text(yaml.safe_dump(compose_cpu, sort_keys=False))
    result = check_jsonschema(merged)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_overlay_drops_the_gpu_reservation_and_builds_the_cpu_image(
    compose: dict[str, Any], compose_cpu: dict[str, Any]
) -> None:
    gpu, cpu = compose["services"]["embedder"], compose_cpu["services"]["embedder"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "devices" not in cpu["deploy"]["resources"]["reservations"]
    assert cpu["build"]["args"]["VARIANT"] == "cpu"
    assert cpu["environment"]["MMRAG_DEVICE"] == "cpu"
    assert cpu["image"] != gpu["image"]


def test_every_compose_service_has_a_healthcheck_and_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} → {dependency}"


def test_workers_are_checked_by_pinging_their_own_celery_node(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        assert compose["services"][name]["healthcheck"]["test"] == ["CMD", "mmrag", "health", "worker", name]


def test_compose_requires_the_minio_credentials_with_a_message() -> None:
    text = COMPOSE.read_text()
    for variable in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert re.search(rf"\$\{{{variable}:\?\w", text), f"{variable} is not required with a message"


def redis_options(command: list[str]) -> dict[str, str]:
    """The options of `sh -c "exec redis-server --name value ..."`."""
    assert command[:2] == ["sh", "-c"], command
    words = shlex.split(command[2])
    assert words[:2] == ["exec", "redis-server"], words
    return dict(zip(words[2::2], words[3::2], strict=True))


def test_compose_runs_redis_with_aof_and_noeviction(compose: dict[str, Any]) -> None:
    options = redis_options(compose["services"]["redis"]["command"])
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"


def test_compose_uses_the_milvus_server_so_embedders_can_scale(compose: dict[str, Any]) -> None:
    assert compose["services"]["embedder"]["environment"]["MMRAG_MILVUS_URI"] == "http://milvus:19530"
    assert "container_name" not in compose["services"]["embedder"]


def test_every_third_party_image_is_pinned_to_an_exact_version(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert re.search(r"\d", tag) and tag != "latest", f"{name}: {image} is not pinned"


# --- configuration: one set of names, one source of the reliability settings ------------------------------


def mmrag_environments(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: document["services"][name].get("environment", {}) for name in SERVICES}


def secrets_example_names() -> set[str]:
    """Every NAME= in secrets.env.example (the keys of the generated Secret), commented-out ones included."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", SECRETS_EXAMPLE.read_text(), flags=re.MULTILINE))


def k8s_environment_names() -> set[str]:
    names = set(k8s_object("ConfigMap", "mmrag-config")["data"])
    names |= secrets_example_names() - {"REDIS_PASSWORD"}
    for deployment in SERVICES:
        for container in pod_containers("Deployment", deployment):
            names |= {variable["name"] for variable in container.get("env", [])}
    return names


def env_example_names() -> set[str]:
    """Every NAME= in .env.example, commented-out examples included."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))


def test_compose_gives_mmrag_services_only_variables_settings_reads(
    compose: dict[str, Any], compose_cpu: dict[str, Any]
) -> None:
    for document in (compose, compose_cpu):
        for name, environment in mmrag_environments(document).items():
            unknown = set(environment) - SETTINGS_ENV - NON_SETTINGS_ENV
            assert not unknown, f"{name}: {sorted(unknown)} are not read by Settings"


def test_kubernetes_gives_mmrag_pods_only_variables_settings_reads() -> None:
    unknown = k8s_environment_names() - SETTINGS_ENV - NON_SETTINGS_ENV
    assert not unknown, f"{sorted(unknown)} are not read by Settings"


def test_env_example_names_only_settings_or_compose_variables() -> None:
    interpolated = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text() + CPU_OVERLAY.read_text()))
    unknown = env_example_names() - SETTINGS_ENV - interpolated - COMPOSE_ONLY_ENV
    assert not unknown, f"{sorted(unknown)} are neither Settings variables nor used by docker-compose"


def test_no_deployment_file_mentions_an_mmrag_variable_that_settings_does_not_read() -> None:
    files = [COMPOSE, CPU_OVERLAY, ENV_EXAMPLE, REPO / "README.md", *DOCKERFILES, *K8S.glob("*.yaml")]
    for path in files:
        unknown = set(re.findall(r"\bMMRAG_[A-Z0-9_]+", path.read_text())) - SETTINGS_ENV
        assert not unknown, f"{path.relative_to(REPO)}: {sorted(unknown)}"


def test_the_task_time_limits_come_only_from_the_settings_defaults() -> None:
    expected = {"MMRAG_SEARCH_TIME_LIMIT_S", "MMRAG_INDEX_TIME_LIMIT_S", "MMRAG_RERANK_BUDGET_S"}
    assert expected | {"MMRAG_VISIBILITY_TIMEOUT_S"} == RELIABILITY_ENV
    for path in [COMPOSE, CPU_OVERLAY, ENV_EXAMPLE, *DOCKERFILES, *K8S.glob("*.yaml")]:
        found = RELIABILITY_ENV & set(re.findall(r"\bMMRAG_[A-Z0-9_]+", path.read_text()))
        assert not found, f"{path.relative_to(REPO)} sets {sorted(found)}: the Settings defaults are their one source"


def test_no_worker_command_line_carries_celery_options(compose: dict[str, Any], compose_cpu: dict[str, Any]) -> None:
    for name in WORKERS:
        for document in (compose, compose_cpu):
            assert document["services"][name]["command"] == ["mmrag", "worker", name]
        [container] = pod_containers("Deployment", name)
        assert container["args"] == ["mmrag", "worker", name]
        assert "command" not in container
        assert f'CMD ["mmrag", "worker", "{name}"]' in (DOCKER / f"{name}.Dockerfile").read_text()


def test_workers_may_finish_their_longest_task_before_they_are_killed(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        assert seconds(compose["services"][name]["stop_grace_period"]) > longest_task_s()
        grace = k8s_object("Deployment", name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > longest_task_s()


# --- Dockerfiles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[path.name for path in DOCKERFILES])
def test_dockerfile_passes_hadolint_without_warnings(dockerfile: Path) -> None:
    command = [str(BIN / "hadolint"), "--failure-threshold", "warning", "--no-color", str(dockerfile)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_as_a_non_root_user_under_tini_with_a_healthcheck(service: str) -> None:
    text = (DOCKER / f"{service}.Dockerfile").read_text()
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["tini", "--"]' in text
    assert "HEALTHCHECK" in text
    assert f"FROM ${{PYTHON_IMAGE}} AS {service}" in text or f"AS {service}\n" in text


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_installs_only_its_own_extra(service: str) -> None:
    instructions = [line for line in (DOCKER / f"{service}.Dockerfile").read_text().splitlines() if line[:1] != "#"]
    assert re.findall(r'install "\./\[(\w+)\]"', "\n".join(instructions)) == [service]
    if service != "embedder":
        assert not [line for line in instructions if "torch" in line]


def test_embedder_image_pins_the_torch_of_pyproject() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["embedder"]
    pins = dict(spec.split("==", 1) for spec in extra if "==" in spec)
    text = (DOCKER / "embedder.Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={pins['torch']}\n" in text
    assert f"ARG TORCHVISION_VERSION={pins['torchvision']}\n" in text


def test_the_model_cache_volume_is_mounted_where_the_image_keeps_hf_home(compose: dict[str, Any]) -> None:
    hf_home = re.search(r"HF_HOME=(\S+)", (DOCKER / "embedder.Dockerfile").read_text())
    assert hf_home is not None
    assert f"model-cache:{hf_home.group(1)}" in compose["services"]["embedder"]["volumes"]
    [container] = pod_containers("Deployment", "embedder")
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["model-cache"] == hf_home.group(1)


def test_dockerignore_keeps_only_what_the_images_install() -> None:
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!services/"} <= set(lines)


# --- Kubernetes ------------------------------------------------------------------------------------------


def test_kubernetes_manifests_parse_and_each_names_its_api_kind_and_name() -> None:
    documents = k8s_documents()
    assert documents
    for document in documents:
        assert document.get("apiVersion") and document.get("kind"), document
        assert document.get("metadata", {}).get("name"), document


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_kubernetes_runs_the_images_compose_builds() -> None:
    services = yaml.safe_load(with_defaults(COMPOSE.read_text()))["services"]
    compose_images = {name: service["image"] for name, service in services.items()}
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name in SERVICES:
        assert compose_images[name] == f"mmrag/{name}:{version}"
        [container] = pod_containers("Deployment", name)
        assert container["image"] == compose_images[name]
    [redis] = pod_containers("StatefulSet", "redis")
    assert redis["image"] == compose_images["redis"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {image["name"]: image["newTag"] for image in kustomization["images"]} == {
        f"mmrag/{name}": version for name in SERVICES
    }


def test_kubernetes_redis_runs_with_the_compose_arguments(compose: dict[str, Any]) -> None:
    [redis] = pod_containers("StatefulSet", "redis")
    # `$$` in compose is a literal `$` (compose's own interpolation is escaped), as in the pod spec.
    assert redis["command"] == [word.replace("$$", "$") for word in compose["services"]["redis"]["command"]]


def test_gateway_probes_liveness_on_healthz_and_readiness_on_readyz() -> None:
    [container] = pod_containers("Deployment", "gateway")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_probes_ping_the_pods_own_celery_node(name: str) -> None:
    [container] = pod_containers("Deployment", name)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["mmrag", "health", "worker", name]


def test_embedder_pods_each_get_one_gpu() -> None:
    [container] = pod_containers("Deployment", "embedder")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def k8s_redis_url() -> str:
    """The MMRAG_REDIS_URL every mmrag Deployment gives its pods (the same in each)."""
    urls = set()
    for name in SERVICES:
        [container] = pod_containers("Deployment", name)
        urls.add(container_env(container)["MMRAG_REDIS_URL"]["value"])
    assert len(urls) == 1, urls
    return urls.pop()


def test_keda_scales_each_worker_on_its_own_queue_list_at_the_configmap_redis() -> None:
    redis_url = urlsplit(k8s_redis_url())
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    for name in WORKERS:
        scaled = k8s_object("ScaledObject", name)
        assert scaled["spec"]["scaleTargetRef"]["name"] == name
        assert scaled["spec"]["minReplicaCount"] >= 1
        triggers = scaled["spec"]["triggers"]
        assert [t["metadata"]["listName"] for t in triggers] == [q.value for q in WORKER_QUEUES[name]]
        for trigger in triggers:
            assert trigger["type"] == "redis"
            metadata = trigger["metadata"]
            assert metadata["address"] == f"{redis_url.hostname}.{namespace}.svc.cluster.local:{redis_url.port}"
            assert metadata["databaseIndex"] == redis_url.path.lstrip("/")
    assert {queue for name in WORKERS for queue in WORKER_QUEUES[name]} == set(Queue)


def test_shared_volumes_are_read_write_many() -> None:
    for claim in ("mmrag-data", "mmrag-model-cache"):
        assert k8s_object("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


# --- mmrag health ----------------------------------------------------------------------------------------


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings re-read from a test environment, and the cached process settings restored afterwards."""
    load_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    load_settings.cache_clear()


def test_worker_health_exits_1_quickly_when_no_worker_answers(
    settings_env: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    settings_env.setenv("MMRAG_REDIS_URL", request.getfixturevalue("redis_url"))
    settings_env.setattr(socket, "gethostname", lambda: "no-such-host.mmrag-test")
    started = time.monotonic()
    result = CliRunner().invoke(health_app, ["worker", "embedder", "--timeout", "0.5"])
    assert result.exit_code == 1, result.output
    assert "embedder@no-such-host.mmrag-test did not answer" in result.output
    assert time.monotonic() - started < 5


def test_worker_health_exits_1_quickly_when_the_broker_is_down(settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("MMRAG_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    result = CliRunner().invoke(health_app, ["worker", "reranker", "--timeout", "1"])
    assert result.exit_code == 1, result.output
    assert "the broker does not answer" in result.output
    assert time.monotonic() - started < 5


class _Readyz(BaseHTTPRequestHandler):
    """A gateway whose plain readiness is `status` and whose full readiness (?full=1) is `full_status`."""

    status = 200
    full_status = 200

    def do_GET(self) -> None:
        status = {"/readyz": self.status, "/readyz?full=1": self.full_status}.get(self.path, 404)
        body = b'{"detail": "no live consumer on queue \'embed-search\'"}' if status != 200 else b'{"status": "ready"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _gateway_health(args: list[str], **statuses: int) -> Any:
    handler = type("Handler", (_Readyz,), statuses)
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        return CliRunner().invoke(health_app, ["gateway", "--url", url, "--timeout", "2", *args])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_gateway_health_follows_readyz(status: int, exit_code: int) -> None:
    result = _gateway_health([], status=status, full_status=503)
    assert result.exit_code == exit_code, result.output
    if exit_code:
        assert "503: no live consumer on queue 'embed-search'" in result.output


def test_gateway_health_full_needs_the_workers() -> None:
    """Plain readiness ignores the workers; --full asks /readyz?full=1, which needs a consumer on every queue."""
    assert _gateway_health([], status=200, full_status=503).exit_code == 0
    result = _gateway_health(["--full"], status=200, full_status=503)
    assert result.exit_code == 1, result.output
    assert "/readyz?full=1 answered 503" in result.output
    assert _gateway_health(["--full"], status=200, full_status=200).exit_code == 0


def test_gateway_health_exits_1_when_nothing_listens() -> None:
    result = CliRunner().invoke(health_app, ["gateway", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "1"])
    assert result.exit_code == 1
    assert "does not answer" in result.output
