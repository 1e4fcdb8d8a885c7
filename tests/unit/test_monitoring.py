"""The monitoring profile: its dashboard and alert rules use only metrics that exist, and its files are wired up.

The mmrag names are taken from what the gateway's /metrics really renders (against a private Redis holding ended
jobs); the celery_* names are those the maintained danihodovic/celery-exporter documents.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.common.job_store import JobStore, new_job_id, new_record, timing_fields
from services.common.jobs import JobKind, JobStage, JobStatus, SearchParams, SearchQuery
from services.gateway.metrics import render
from tests.unit.test_deploy import COMPOSE, load_compose

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "mmrag.json"
RULES = MONITORING / "alerts.yml"

CELERY_EXPORTER_METRICS = {
    f"celery_{name}"
    for name in (
        "task_sent_total",
        "task_received_total",
        "task_started_total",
        "task_succeeded_total",
        "task_failed_total",
        "task_rejected_total",
        "task_revoked_total",
        "task_retried_total",
        "worker_up",
        "worker_tasks_active",
        "task_runtime_bucket",
        "queue_length",
        "active_worker_count",
        "active_process_count",
    )
}
# What a worker serves on MMRAG_WORKER_METRICS_PORT (tests/integration/test_worker_metrics.py reads them there).
WORKER_METRICS = {
    "mmrag_worker_model_load_seconds",
    "mmrag_worker_encoded_items_total",
    "mmrag_worker_encode_seconds_bucket",
    "mmrag_worker_encode_seconds_count",
    "mmrag_worker_encode_seconds_sum",
    "mmrag_worker_resident_memory_bytes",
    "mmrag_worker_gpu_memory_bytes",
}
METRIC_NAME = re.compile(r"\b(?:mmrag|celery)_[a-zA-Z0-9_]+")


def exposed_names(redis_url: str) -> set[str]:
    """Every sample name the gateway's /metrics can hold, once a search has ended."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = JobStore(client, ttl_s=60)
    job_id = new_job_id()
    params = SearchParams(collection="c", limit=3, rerank=True, query=SearchQuery(blob_id="b"))
    store.create(new_record(job_id, JobKind.SEARCH, params))
    result = {"collection": "c", "model": "m", "candidates": [], "rerank": {"status": "applied"}, "batch_size": 2}
    store.update(
        job_id,
        fields={
            "status": JobStatus.SUCCEEDED.value,
            "stage": JobStage.DONE.value,
            "result": json.dumps(result),
            "batch_size": "2",
            **timing_fields(queue=1, embed=2, search=3, rerank=4, vlm=5, total=15),
        },
    )
    client.close()

    async def scrape() -> str:
        async_client = aioredis.Redis.from_url(redis_url)
        try:
            return (await render(async_client)).decode()
        finally:
            await async_client.aclose()

    names: set[str] = set()
    for family in text_string_to_metric_families(asyncio.run(scrape())):
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [])
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rule_expressions() -> list[str]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_dashboard_and_the_rules_use_only_metrics_that_exist(redis_url: str) -> None:
    known = exposed_names(redis_url) | CELERY_EXPORTER_METRICS | WORKER_METRICS
    # The families the issue asks for are all there.
    for family in (
        "mmrag_http_requests_total",
        "mmrag_http_request_duration_seconds_bucket",
        "mmrag_jobs_submitted_total",
        "mmrag_jobs_finished_total",
        "mmrag_job_stage_seconds_bucket",
        "mmrag_rerank_total",
        "mmrag_index_images_total",
        "mmrag_queue_length",
        "mmrag_queue_consumers",
        "mmrag_search_batch_size_bucket",
        "mmrag_vlm_requests_total",
        "mmrag_vlm_seconds_bucket",
    ):
        assert family in known, family
    expressions = dashboard_expressions() + rule_expressions()
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert used, "no metric found in the dashboard and rules"
    assert used - known == set()
    # The dashboard shows the whole pipeline.
    for needed in ("mmrag_jobs_finished_total", "mmrag_queue_length", "mmrag_rerank_total", "mmrag_index_images_total"):
        assert needed in used


def test_the_rules_cover_the_alerts_the_operations_section_explains() -> None:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {
        "MmragQueueWithoutConsumer",
        "MmragBacklogGrowing",
        "MmragJobFailureRatio",
        "MmragSearchLatencyHigh",
        "MmragVlmFailures",
    } <= set(alerts)
    assert alerts["MmragQueueWithoutConsumer"]["for"] == "1m"
    assert alerts["MmragBacklogGrowing"]["for"] == "5m"
    assert "0.05" in alerts["MmragJobFailureRatio"]["expr"]
    readme = (REPO / "README.md").read_text()
    for name in alerts:
        assert name in readme, f"README does not explain {name}"


def test_the_monitoring_profile_mounts_files_that_exist() -> None:
    compose = load_compose(COMPOSE)
    services = compose["services"]
    for name in ("prometheus", "grafana", "celery-exporter"):
        assert services[name]["profiles"] == ["monitoring"], name
    # Without the profile, nothing of it starts.
    assert all(
        "profiles" not in s for n, s in services.items() if n not in ("prometheus", "grafana", "celery-exporter")
    )
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), source
    config: dict[str, Any] = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for job in jobs.values() for c in job.get("static_configs", []) for t in c["targets"]}
    assert {"gateway:8000", "celery-exporter:9808"} <= targets
    # Every worker replica, on the port compose gives the workers.
    workers = jobs["mmrag-workers"]["dns_sd_configs"][0]
    assert set(workers["names"]) == {"embedder", "reranker"}
    for name in workers["names"]:
        assert str(services[name]["environment"]["MMRAG_WORKER_METRICS_PORT"]) == str(workers["port"])
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
