"""The `mmrag` command line as users run it: real processes against the running stack, read by exit code and output."""

from __future__ import annotations

import io
import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from services.common.collections import CollectionInfo, CollectionRegistry
from tests.integration.conftest import Stack, gallery, png_bytes, sha256_id
from tests.support.processes import REPO, python_module, refused_port, stack_env, wait_until

pytestmark = pytest.mark.integration

IMAGES = 40  # two index chunks


def mmrag(stack: Stack, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`mmrag ARGS` in a process of its own, pointed at the stack's gateway through MMRAG_GATEWAY_URL."""
    env = {**stack.env, "MMRAG_GATEWAY_URL": stack.gateway_url, "COLUMNS": "200"}
    return subprocess.run(
        python_module("services.cli.main", *args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )


@pytest.fixture(scope="module")
def cli_gallery(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-gallery")
    for name, data in gallery(IMAGES):
        (folder / name).write_bytes(data)
    lines = [json.dumps({"filename": name, "title": f"cli {name}"}) for name, _ in gallery(IMAGES)]
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    return folder


@pytest.fixture(scope="module")
def indexed_by_cli(stack: Stack, cli_gallery: Path) -> subprocess.CompletedProcess[str]:
    return mmrag(stack, "index", str(cli_gallery), "--metadata", str(cli_gallery / "metadata.jsonl"), "-c", "cli")


def test_mmrag_index_indexes_a_folder_showing_progress(
    stack: Stack, indexed_by_cli: subprocess.CompletedProcess[str]
) -> None:
    assert indexed_by_cli.returncode == 0, indexed_by_cli.stderr
    assert f"cli: {IMAGES} indexed, 0 already there, 0 failed (of {IMAGES} files)" in indexed_by_cli.stdout
    for bar in ("uploading", "indexing"):
        assert re.search(rf"{bar}\s+\S+\s+{IMAGES}/{IMAGES}", indexed_by_cli.stderr), indexed_by_cli.stderr
    with stack.http() as http:
        assert http.get("/v1/collections/cli").json()["count"] == IMAGES


def test_mmrag_index_exits_1_when_no_file_could_be_indexed(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(png_bytes((1, 2, 3))[:60])
    (tmp_path / "empty.jpg").write_bytes(b"")
    run = mmrag(stack, "index", str(tmp_path), "-c", "cli_broken")
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "failed broken.png" in run.stderr and "failed empty.jpg" in run.stderr, run.stderr
    assert "0 indexed, 0 already there, 2 failed (of 2 files)" in run.stdout


def test_mmrag_search_json_and_panorama(stack: Stack, indexed_by_cli: subprocess.CompletedProcess[str], tmp_path: Path):
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes((200, 40, 40)))
    panorama = tmp_path / "panorama.jpg"
    run = mmrag(
        stack, "search", str(query), "-i", "phone case with this theme", "-c", "cli", "--limit", "4", "--json",
        "--panorama", str(panorama),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "succeeded"
    assert len(job["result"]["candidates"]) == 4
    assert job["result"]["rerank"]["status"] == "applied"
    assert all(c["metadata"]["title"].startswith("cli ") for c in job["result"]["candidates"])
    assert f"panorama saved to {panorama}" in " ".join(run.stderr.split())
    assert Image.open(io.BytesIO(panorama.read_bytes())).format == "JPEG"


def test_mmrag_search_prints_the_ranking_for_people(
    stack: Stack, indexed_by_cli: subprocess.CompletedProcess[str], cli_gallery: Path
) -> None:
    run = mmrag(stack, "search", str(cli_gallery / "item_003.png"), "-c", "cli", "--limit", "3", "--no-rerank")
    assert run.returncode == 0, run.stderr
    assert "3 results in 'cli' (tiny-random)" in run.stdout
    [first_row] = [line for line in run.stdout.splitlines() if re.match(r"│ 1\s+│", line)]
    assert sha256_id((cli_gallery / "item_003.png").read_bytes())[:16] in first_row, run.stdout
    assert "rerank skipped" in run.stdout


def test_mmrag_search_exits_1_when_the_request_is_refused(stack: Stack, tmp_path: Path) -> None:
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes((9, 9, 9)))
    run = mmrag(stack, "search", str(query), "-c", "no_such_collection")
    assert run.returncode == 1
    assert "404" in run.stderr and "no_such_collection" in run.stderr, run.stderr


def test_mmrag_search_exits_1_when_the_job_fails(
    stack: Stack, indexed_by_cli: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    # Registered, but with no index behind it: the gateway takes the search, and the job fails in the worker.
    with stack.redis() as client:
        CollectionRegistry(client).put(
            CollectionInfo(
                name="cli_other_model", count=1, dim=128, model="tiny-random", metric="COSINE",
                created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes((9, 9, 9)))
    try:
        run = mmrag(stack, "search", str(query), "-c", "cli_other_model", "--json")
    finally:
        with stack.redis() as client:
            CollectionRegistry(client).remove("cli_other_model")
    assert run.returncode == 1, run.stdout
    job = json.loads(run.stdout)
    assert job["status"] == "failed"
    assert f"job {job['id']} failed: {job['error']['detail']}" in " ".join(run.stderr.split()), run.stderr


@pytest.mark.parametrize("worker", ["embedder", "reranker"])
def test_mmrag_health_worker_answers_for_a_live_worker(stack: Stack, worker: str) -> None:
    # The embedder's pool process loads its model after the worker answers pings (a few seconds after start):
    # until then its readiness is rightly 1.
    wait_until(lambda: mmrag(stack, "health", "worker", worker, "--timeout", "10").returncode == 0, 60, "readiness")
    run = mmrag(stack, "health", "worker", worker, "--timeout", "10")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(": ok") and run.stdout.startswith(f"{worker}@")
    live = mmrag(stack, "health", "worker", worker, "--live")
    assert live.returncode == 0, live.stderr
    assert live.stdout.strip() == run.stdout.strip().replace(": ok", ": alive")


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (["gateway"], "MMRAG_MAX_UPLOAD_MB", "-1"),
        (["worker", "embedder"], "MMRAG_DEVICE", "tpu"),
        (["worker", "reranker"], "MMRAG_LLM_TIMEOUT_S", "0"),
        (["up"], "MMRAG_JOB_TTL_S", "soon"),
    ],
    ids=["gateway", "embedder", "reranker", "up"],
)
def test_a_bad_setting_stops_a_real_process_at_start_naming_the_variable(
    tmp_path: Path, command: list[str], variable: str, value: str
) -> None:
    """The process exits at once with code 2. Were it to start anyway, it would find its Redis and its port
    refused (both held by the test), not anyone's real ones."""
    with refused_port() as redis_port, refused_port() as port:
        env = stack_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path, **{variable: value})
        argv = python_module("services.cli.main", *command, *(["--port", str(port)] if command[0] != "worker" else []))
        run = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert variable in run.stderr and repr(value) in run.stderr, run.stderr
