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
from tests.support.processes import refused_port

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
def test_worker_probes_ping_the_pods_own_celery_node_and_liveness_stays_local(name: str) -> None:
    [container] = pod_containers("Deployment", name)
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["mmrag", "health", "worker", name]
    # A Redis blip must not restart every worker: liveness does not go through the broker.
    assert container["livenessProbe"]["exec"]["command"] == ["mmrag", "health", "worker", name, "--live"]


def test_embedder_pods_each_get_one_gpu() -> None:
    [container] = pod_containers("Deployment", "embedder")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def k8s_redis_url() -> str:
    """The MMRAG_REDIS_URL every mmrag Deployment gives its pods (the same in each)."""
    urls: set[str] = set()
    for name in SERVICES:
        [container] = pod_containers("Deployment", name)
        urls.add(str(container_env(container)["MMRAG_REDIS_URL"]["value"]))
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


# --- production hardening (issue 11) ----------------------------------------------------------------------

# Settings no deployment lets an operator set, and why. Everything else can be set in compose and in Kubernetes.
FIXED_IN_DEPLOYMENTS = {
    # the task time limits: one source, the Settings defaults (test_the_task_time_limits_come_only_...)
    **dict.fromkeys(RELIABILITY_FIELDS, "reliability"),
    # read by the CLI on an operator's machine, not by a service
    "gateway_url": "CLI only",
    "api_key": "CLI only",
}
# Fixed by the deployment itself (wiring between containers, keys on) rather than left to the operator.
WIRED_IN_DEPLOYMENTS = {"redis_url", "data_dir", "milvus_uri", "auth", "bootstrap_admin_key"}
# Redis releases with the fixes for CVE-2025-21605 (7.4.3) and CVE-2025-49844 (7.4.6).
MIN_REDIS = (7, 4, 6)


def settable_env(field_name: str) -> str:
    """The variable an operator sets for `field_name` (the MMRAG_ name, or OPENAI_API_KEY)."""
    names = env_names(field_name)
    return "OPENAI_API_KEY" if "OPENAI_API_KEY" in names else f"{ENV_PREFIX}{field_name}".upper()


def compose_environment_names(document: dict[str, Any]) -> set[str]:
    return set().union(*(set(environment) for environment in mmrag_environments(document).values()))


def configmap_listed_names() -> set[str]:
    """The ConfigMap's keys and its commented-out `# MMRAG_X: value` examples."""
    text = (K8S / "configmap.yaml").read_text()
    listed = set(re.findall(r"^\s*#\s*(MMRAG_[A-Z0-9_]+):", text, flags=re.MULTILINE))
    return listed | set(k8s_object("ConfigMap", "mmrag-config")["data"])


def test_every_setting_can_be_set_in_compose_or_is_deliberately_fixed(compose: dict[str, Any]) -> None:
    available = compose_environment_names(compose)
    for field_name in Settings.model_fields:
        if field_name in FIXED_IN_DEPLOYMENTS:
            assert not env_names(field_name) & available, f"{field_name} is fixed but compose passes it"
            continue
        assert settable_env(field_name) in available, f"compose silently ignores {settable_env(field_name)}"


def test_every_setting_can_be_set_in_kubernetes_or_is_deliberately_fixed() -> None:
    available = k8s_environment_names() | configmap_listed_names()
    for field_name in Settings.model_fields:
        if field_name in FIXED_IN_DEPLOYMENTS:
            assert not env_names(field_name) & available, f"{field_name} is fixed but Kubernetes sets it"
            continue
        assert settable_env(field_name) in available, f"Kubernetes has no place for {settable_env(field_name)}"


def test_the_fixed_list_names_only_settings_fields() -> None:
    assert set(FIXED_IN_DEPLOYMENTS) | WIRED_IN_DEPLOYMENTS <= set(Settings.model_fields)


def test_compose_wires_what_the_deployment_fixes(compose: dict[str, Any]) -> None:
    shared = compose["services"]["gateway"]["environment"]
    for field_name in WIRED_IN_DEPLOYMENTS:
        assert shared.get(settable_env(field_name)), f"compose leaves {settable_env(field_name)} unset"


@pytest.mark.parametrize("service", SERVICES)
def test_compose_builds_each_image_from_its_own_stage_never_pulls_it(compose: dict[str, Any], service: str) -> None:
    """The embedder's default build is `embedder`, not the last stage `embedder-baked` with weights inside."""
    build = compose["services"][service]["build"]
    assert build["target"] == service
    assert f"AS {service}\n" in (DOCKER / f"{service}.Dockerfile").read_text()
    assert compose["services"][service]["pull_policy"] == "build"


def test_the_readme_build_loop_names_the_target() -> None:
    readme = (REPO / "README.md").read_text()
    builds = re.findall(r"docker build -f deploy/docker/\$s\.Dockerfile[^\n]*", readme)
    assert builds, "the README has no build loop"
    assert all("--target $s" in line for line in builds), builds
    assert "--target embedder-baked" in readme, "the baked stage is built only on request"


def test_the_readme_pins_the_milvus_chart_and_the_server_compose_runs(compose: dict[str, Any]) -> None:
    server = compose["services"]["milvus"]["image"].rsplit(":", 1)[1]
    readme = (REPO / "README.md").read_text()
    install = re.search(r"helm install milvus milvus/milvus[^`]*?(?=\n\s*```)", readme, flags=re.DOTALL)
    assert install, "the README has no Milvus helm install"
    assert re.search(r"--version \d+\.\d+\.\d+", install.group(0)), install.group(0)
    assert f"--set image.all.tag={server}" in install.group(0), install.group(0)


def test_gateway_readiness_depends_on_the_gateway_only(compose: dict[str, Any]) -> None:
    """A rollout of the workers must not take the gateway out of service: no --full, no ?full=1 in the probes."""
    assert compose["services"]["gateway"]["healthcheck"]["test"] == [
        "CMD",
        "mmrag",
        "health",
        "gateway",
        "--url",
        "http://127.0.0.1:8000",
    ]
    [container] = pod_containers("Deployment", "gateway")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "HEALTHCHECK" in (text := (DOCKER / "gateway.Dockerfile").read_text()) and "--full" not in text


def redis_version(image: str) -> tuple[int, ...]:
    match = re.fullmatch(r"redis:(\d+)\.(\d+)\.(\d+)(-[a-z]+)?", image)
    assert match, image
    return tuple(int(part) for part in match.groups()[:3])


def test_redis_is_a_patch_release_with_the_2025_cve_fixes(compose: dict[str, Any]) -> None:
    [redis] = pod_containers("StatefulSet", "redis")
    for image in (compose["services"]["redis"]["image"], redis["image"]):
        assert redis_version(image) >= MIN_REDIS, image


def test_compose_redis_requires_a_password_that_every_client_uses(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis_options(redis["command"])["--requirepass"] == "$$REDISCLI_AUTH"
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    url = compose["x-mmrag-environment"]["MMRAG_REDIS_URL"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", url), url
    assert compose["services"]["flower"]["environment"]["CELERY_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert "redis://redis" not in COMPOSE.read_text(), "a Redis URL without the password"
    assert "REDIS_PASSWORD=" in ENV_EXAMPLE.read_text()


def test_kubernetes_redis_password_comes_from_the_secret_for_redis_pods_and_keda() -> None:
    [redis] = pod_containers("StatefulSet", "redis")
    assert redis_options(redis["command"])["--requirepass"] == "$REDISCLI_AUTH"
    secret_ref = container_env(redis)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]
    assert secret_ref == {"name": "mmrag-secrets", "key": "REDIS_PASSWORD"}
    assert urlsplit(k8s_redis_url()).password == "$(REDIS_PASSWORD)"
    for name in SERVICES:
        [container] = pod_containers("Deployment", name)
        env = container_env(container)
        # Kubernetes expands $(REDIS_PASSWORD) only from a variable defined earlier in the list.
        assert list(env).index("REDIS_PASSWORD") < list(env).index("MMRAG_REDIS_URL")
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mmrag-secrets", "key": "REDIS_PASSWORD"}
    auth = k8s_object("TriggerAuthentication", "mmrag-redis")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "mmrag-secrets", "key": "REDIS_PASSWORD"}
    ]
    for name in WORKERS:
        for trigger in k8s_object("ScaledObject", name)["spec"]["triggers"]:
            assert trigger["authenticationRef"] == {"name": "mmrag-redis"}


def test_only_mmrag_pods_and_keda_may_reach_redis() -> None:
    policy = k8s_object("NetworkPolicy", "redis")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "redis"}}
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    [pods, keda] = rule["from"]
    [expression] = pods["podSelector"]["matchExpressions"]
    assert expression["key"] == "app.kubernetes.io/name" and set(expression["values"]) == set(SERVICES)
    assert keda == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def probe_window_s(probe: dict[str, Any]) -> float:
    """How long a probe may fail before Kubernetes acts."""
    return float(probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3))


def test_redis_has_a_startup_probe_long_enough_to_load_its_aof() -> None:
    [redis] = pod_containers("StatefulSet", "redis")
    assert redis["startupProbe"]["exec"] == redis["livenessProbe"]["exec"]
    assert probe_window_s(redis["startupProbe"]) >= 600


@pytest.mark.parametrize("name", WORKERS)
def test_keda_owns_the_worker_replica_counts(name: str) -> None:
    assert "replicas" not in k8s_object("Deployment", name)["spec"]
    assert k8s_object("ScaledObject", name)["spec"]["scaleTargetRef"]["name"] == name


def test_no_secret_lives_in_the_repository() -> None:
    assert not [d for d in k8s_documents() if d["kind"] == "Secret"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["secretGenerator"] == [{"name": "mmrag-secrets", "envs": ["secrets.env"]}]
    assert "deploy/k8s/secrets.env" in (REPO / ".gitignore").read_text().splitlines()
    text = SECRETS_EXAMPLE.read_text()
    assert not re.search(r"^[A-Z_]+=\S", text, flags=re.MULTILINE), "the example must not carry a value"


def test_every_secret_key_a_pod_reads_is_in_the_secrets_example() -> None:
    keys = set()
    for document in k8s_documents():
        for container in document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "mmrag-secrets"
                    keys.add(ref["key"])
    assert keys == secrets_example_names()


def test_the_embedder_gets_the_milvus_token_from_the_secret() -> None:
    [container] = pod_containers("Deployment", "embedder")
    ref = container_env(container)["MMRAG_MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mmrag-secrets", "key": "MMRAG_MILVUS_TOKEN", "optional": True}


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kustomize_stops_without_secrets_env_and_builds_with_it(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    command = [str(KUBECTL), "kustomize", str(copy)]
    missing = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0
    assert "secrets.env" in missing.stderr and "no such file" in missing.stderr, missing.stderr
    (copy / "secrets.env").write_text("REDIS_PASSWORD=0123abcd\nMMRAG_BOOTSTRAP_ADMIN_KEY=" + "a" * 64 + "\n")
    built = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    [secret] = [d for d in yaml.safe_load_all(built.stdout) if d and d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "mmrag-secrets" and set(secret["data"]) == {
        "REDIS_PASSWORD",
        "MMRAG_BOOTSTRAP_ADMIN_KEY",
    }


def test_compose_publishes_the_gateway_on_the_loopback_interface_by_default() -> None:
    services = yaml.safe_load(with_defaults(COMPOSE.read_text()))["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert services["gateway"]["ports"] == ["127.0.0.1:8000:8000"]


def test_minio_is_checked_with_mc_which_every_architecture_of_its_image_has(compose: dict[str, Any]) -> None:
    assert compose["services"]["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]


def test_every_compose_service_has_a_memory_limit(compose: dict[str, Any], compose_cpu: dict[str, Any]) -> None:
    for document in (compose, compose_cpu):
        for name, service in document["services"].items():
            limit = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
            assert re.fullmatch(r"\d+[mg]", str(limit)), f"{name} has no memory limit"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_liveness_tolerates_a_slow_beat_and_readiness_reacts_first(name: str) -> None:
    """Liveness is local (it cannot see Redis); still, one late heartbeat on a loaded host must not restart a worker."""
    [container] = pod_containers("Deployment", name)
    assert probe_window_s(container["livenessProbe"]) >= 90
    assert probe_window_s(container["readinessProbe"]) < probe_window_s(container["livenessProbe"])


@pytest.mark.parametrize(
    ("kind", "name"),
    [("Deployment", "gateway"), ("Deployment", "embedder"), ("Deployment", "reranker"), ("StatefulSet", "redis")],
)
def test_every_pod_runs_under_the_runtime_default_seccomp_profile(kind: str, name: str) -> None:
    pod = k8s_object(kind, name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_pod_template_is_covered_by_the_seccomp_test() -> None:
    templates = {(d["kind"], d["metadata"]["name"]) for d in k8s_documents() if "template" in d.get("spec", {})}
    assert templates == {
        ("Deployment", "gateway"),
        ("Deployment", "embedder"),
        ("Deployment", "reranker"),
        ("StatefulSet", "redis"),
    }


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
    settings_env.setenv("MMRAG_REDIS_URL", request.getfixturevalue("redis_url"))
    settings_env.setattr(socket, "gethostname", lambda: "no-such-host.mmrag-test")
    started = time.monotonic()
    result = CliRunner().invoke(health_app, ["worker", "embedder", "--timeout", "0.5"])
    assert result.exit_code == 1, result.output
    assert "embedder@no-such-host.mmrag-test did not answer" in result.output
    assert time.monotonic() - started < 5


def test_worker_health_exits_1_quickly_when_the_broker_is_down(settings_env: pytest.MonkeyPatch) -> None:
    with refused_port() as port:
        settings_env.setenv("MMRAG_REDIS_URL", f"redis://127.0.0.1:{port}/0")
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
    with refused_port() as port:
        result = CliRunner().invoke(health_app, ["gateway", "--url", f"http://127.0.0.1:{port}", "--timeout", "1"])
    assert result.exit_code == 1
    assert "does not answer" in result.output


def _line(version: str) -> str:
    """The major.minor line of a version such as 'v2.6.15' or '2.6.17'."""
    match = re.match(r"v?(\d+)\.(\d+)\.", version)
    assert match, version
    return f"{match[1]}.{match[2]}"


def test_the_milvus_client_is_pinned_to_the_server_line_that_compose_and_the_readme_deploy(
    compose: dict[str, Any],
) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    [pin] = {r for r in requirements if r.startswith("pymilvus")}
    bounds = re.fullmatch(r"pymilvus>=([\d.]+),<(\d+)\.(\d+)", pin)
    assert bounds, f"{pin}: pin a lower bound and the next minor line as the upper bound"
    client_line = _line(bounds[1])
    major, minor = client_line.split(".")
    assert (bounds[2], int(bounds[3])) == (major, int(minor) + 1), f"{pin}: allow the one line {client_line}"

    server_tag = compose["services"]["milvus"]["image"].split(":")[1]
    assert _line(server_tag) == client_line, f"compose runs Milvus {server_tag}, the client is {pin}"

    readme = (REPO / "README.md").read_text()
    helm = re.search(r"helm install milvus milvus/milvus --version (\S+) .*--set image\.all\.tag=(\S+)", readme)
    assert helm, "the README's Helm install pins the chart and the server"
    assert re.fullmatch(r"\d+\.\d+\.\d+", helm[1]), "the chart version is pinned exactly"
    assert helm[2] == server_tag, "the Helm install runs the server compose runs"
