"""/openapi.json is a contract a generated client can rely on: a client generated from it by openapi-python-client
(offline, no hand edits) runs a search end to end against the real stack, with typed jobs, results and problems."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from services.common.media import MEDIA_TYPES
from tests.integration.conftest import Stack, png_bytes, sha256_id
from tests.support.contract import RESPONSES, gateway_document

pytestmark = pytest.mark.integration

PACKAGE = "mmrag_openapi_client"
# The generator reads only JSON bodies, text and application/octet-stream as answers: an image is bytes to it.
GENERATOR_CONFIG = {
    "post_hooks": [],
    "content_type_overrides": dict.fromkeys(MEDIA_TYPES.values(), "application/octet-stream"),
}
# Generation takes about a second; the bound is for a machine whose two cores are busy with the stack.
GENERATE_TIMEOUT_S = 60
SEARCH_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def generated(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package generated from the document the gateway serves, importable for this module's tests."""
    with stack.http() as http:
        served = http.get("/openapi.json")
    assert served.status_code == 200
    # The document the session's answers are checked against (contract.py) is the one served.
    assert served.json() == json.loads(json.dumps(gateway_document()))
    folder = tmp_path_factory.mktemp("generated-client")
    (folder / "openapi.json").write_bytes(served.content)
    (folder / "config.json").write_text(json.dumps(GENERATOR_CONFIG))
    generator = [sys.executable, "-m", "openapi_python_client", "generate", "--meta", "none"]
    run = subprocess.run(
        [*generator, "--path", "openapi.json", "--config", "config.json", "--output-path", PACKAGE],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=GENERATE_TIMEOUT_S,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # The generator warns and leaves out whatever construct it cannot read: the document must have none.
    assert "Warning" not in output and "WARNING" not in output, output
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def _client(package: ModuleType, stack: Stack) -> Any:
    # The shared stack runs without keys; the routes still declare the bearer scheme, so the client sends one.
    return package.AuthenticatedClient(
        base_url=stack.gateway_url,
        token="unused-with-auth-off",
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30),
        httpx_args={"event_hooks": RESPONSES.hooks()},
    )


def _wait(package: ModuleType, client: Any, job_id: str) -> Any:
    get_job = _module(package, "api.jobs.get_job")
    models = _module(package, "models")
    deadline = time.monotonic() + SEARCH_TIMEOUT_S
    while time.monotonic() < deadline:
        job = get_job.sync(job_id=job_id, client=client, wait=5)
        assert isinstance(job, models.Job), job
        if job.status in (models.JobStatus.SUCCEEDED, models.JobStatus.FAILED, models.JobStatus.CANCELED):
            return job
    raise TimeoutError(f"job {job_id} did not finish in {SEARCH_TIMEOUT_S} s")


def test_a_generated_client_runs_a_search_with_typed_answers(
    generated: ModuleType, stack: Stack, indexed: dict[str, bytes]
) -> None:
    models = _module(generated, "models")
    types = _module(generated, "types")
    create_search = _module(generated, "api.searches.create_search")
    indexed_ids = {sha256_id(data) for data in indexed.values()}
    image = types.File(payload=io.BytesIO(png_bytes((200, 40, 40))), file_name="query.png", mime_type="image/png")

    with _client(generated, stack) as client:
        created = create_search.sync_detailed(
            client=client,
            body=models.CreateSearchFilesBody(image=image, instruction="the same, in red", limit=4),
        )
        assert created.status_code == 202, created.content
        assert isinstance(created.parsed, models.Job)
        assert created.parsed.kind == models.JobKind.SEARCH
        assert created.headers["location"] == f"/v1/jobs/{created.parsed.id}"
        job = _wait(generated, client, created.parsed.id)

    assert job.status == models.JobStatus.SUCCEEDED, job.to_dict()
    assert job.stage == models.JobStage.DONE
    assert job.updated_at >= job.created_at
    result = job.result
    assert isinstance(result, models.SearchResult), result
    assert result.collection == "default"
    assert len(result.candidates) == 4
    for rank, candidate in enumerate(result.candidates, start=1):
        assert isinstance(candidate, models.Candidate)
        assert candidate.rank == rank
        assert candidate.id in indexed_ids
        assert isinstance(candidate.score, float)
        assert candidate.image_url == f"/v1/collections/default/images/{candidate.id}"
    assert isinstance(result.rerank, models.RerankInfo)
    assert isinstance(result.rerank.status, models.RerankInfoStatus)


def test_a_generated_client_sends_json_searches_and_reads_problems(
    generated: ModuleType, stack: Stack, indexed: dict[str, bytes]
) -> None:
    models = _module(generated, "models")
    create_search = _module(generated, "api.searches.create_search")
    get_job = _module(generated, "api.jobs.get_job")
    image_id = sha256_id(next(iter(indexed.values())))

    with _client(generated, stack) as client:
        body = models.SearchRequestBody(image_id=image_id, rerank=False, limit=3)
        created = create_search.sync(client=client, body=body)
        assert isinstance(created, models.Job), created
        job = _wait(generated, client, created.id)
        assert job.status == models.JobStatus.SUCCEEDED, job.to_dict()
        assert [c.id for c in job.result.candidates][:1] == [image_id]

        missing = get_job.sync_detailed(job_id="0" * 32, client=client)
        unknown_collection = create_search.sync_detailed(
            client=client, body=models.SearchRequestBody(image_id=image_id, collection="nowhere")
        )
    for answer in (missing, unknown_collection):
        assert answer.status_code == 404
        assert isinstance(answer.parsed, models.ProblemDetails), answer.content
        assert answer.parsed.type_ == models.ProblemType.NOT_FOUND
        assert answer.parsed.status == 404
        assert answer.parsed.detail
