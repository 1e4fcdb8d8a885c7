"""An embedder with MMRAG_WORKER_METRICS_PORT serves its pool's model load time, encode count and memory."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import gallery, running_stack, wait_for_job
from tests.support.processes import Service, free_port, python_module, wait_until


def samples(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=5).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels or set(sample.labels) == {"pid"}
    }


def test_an_embedder_serves_its_process_metrics(tmp_path: Path) -> None:
    with running_stack(tmp_path, {"reranker": "reranker", "embedder": "embedder"}) as stack:
        # A second embedder with its own metrics port; the first one is stopped so that this one does the work.
        port = free_port()
        env = stack.env | {"MMRAG_WORKER_METRICS_PORT": str(port)}
        command = python_module("services.cli.main", "worker", "embedder", "--concurrency", "1")
        stack.services["embedder"].stop()
        stack.services["embedder-metrics"] = Service("embedder-metrics", command, env, tmp_path).start()
        url = f"http://127.0.0.1:{port}/metrics"

        def loaded() -> bool:
            try:
                return samples(url).get("mmrag_worker_model_load_seconds", 0) > 0
            except httpx.HTTPError:
                return False

        wait_until(loaded, 120, "the embedder's model load time on its metrics port", interval_s=0.5)
        before = samples(url).get("mmrag_worker_encoded_items_total", 0.0)
        assert before == 0  # the warm-up is not work
        with stack.http() as http:
            images = gallery(5)
            posted = http.post(
                "/v1/collections/default/images",
                files=[("files", (name, data, "image/png")) for name, data in images],
            )
            job = wait_for_job(http, posted.json()["id"])
            assert job["status"] == "succeeded", (job, stack.logs())

        after = samples(url)
        assert after["mmrag_worker_encoded_items_total"] == 5
        assert after["mmrag_worker_encode_seconds_count"] >= 1
        assert after["mmrag_worker_resident_memory_bytes"] > 10_000_000
