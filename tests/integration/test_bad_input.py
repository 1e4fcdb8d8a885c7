"""Bad input gets a 4xx problem+json that says what to fix and nothing is stored; bad work that does reach a worker
ends its job with a problem, and no worker process dies."""

from __future__ import annotations

import functools
import io
import zlib
from typing import Any

import pytest
from PIL import Image

from services.common.celery_app import create_celery
from services.common.queues import TASK_QUEUES, TaskName
from services.common.settings import Settings
from tests.integration.conftest import Stack, png_bytes, sha256_id, stored_requests, wait_for_job
from tests.support.processes import wait_until
from tests.support.tasks import task_ids

pytestmark = pytest.mark.integration


def _jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 20,000×20,000 PNG header with a tiny compressed body: a decompression bomb."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 16)  # a few rows are enough to be a plausible bomb
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


CASES: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("non-image", {"files": {"image": ("a.txt", b"hello, I am text", "text/plain")}}, 422, "invalid-image", "not a"),
    ("truncated JPEG", {"files": {"image": ("t.jpg", _jpeg()[:300], "image/jpeg")}}, 422, "invalid-image", "complete"),
    ("20000x20000 PNG", {"files": {"image": ("big.png", _huge_png(), "image/png")}}, 422, "invalid-image", "limit"),
    ("empty file", {"files": {"image": ("e.png", b"", "image/png")}}, 422, "invalid-image", "empty"),
    (
        "1 MB instruction",
        {"files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")}, "data": {"instruction": "x" * 1_048_576}},
        400,
        "invalid-request",
        "MMRAG_MAX_INSTRUCTION_CHARS",
    ),
    (
        "limit=0",
        {"files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")}, "data": {"limit": "0"}},
        400,
        "invalid-request",
        "limit",
    ),
    (
        "limit=1000",
        {"files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")}, "data": {"limit": "1000"}},
        400,
        "invalid-request",
        "limit",
    ),
    (
        "unknown collection",
        {"files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")}, "data": {"collection": "nope"}},
        404,
        "not-found",
        "nope",
    ),
    (
        "bad collection name",
        {"files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")}, "data": {"collection": "../etc"}},
        400,
        "invalid-request",
        "collection name",
    ),
    ("nothing to search with", {"data": {"limit": "3"}}, 400, "invalid-request", "an 'instruction' alone"),
    ("a blank instruction alone", {"data": {"instruction": "  "}}, 400, "invalid-request", "an 'instruction' alone"),
    ("JSON with nothing to search with", {"json": {"limit": 3}}, 400, "invalid-request", "an 'instruction' alone"),
    (
        "image and image_id",
        {"files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")}, "data": {"image_id": "a" * 64}},
        400,
        "invalid-request",
        "not both",
    ),
    ("min_score=1.5", {"data": {"instruction": "red", "min_score": "1.5"}}, 400, "invalid-request", "min_score"),
    ("min_score=high", {"data": {"instruction": "red", "min_score": "high"}}, 400, "invalid-request", "min_score"),
    ("JSON min_score=-2", {"json": {"instruction": "red", "min_score": -2}}, 400, "invalid-request", "min_score"),
    ("JSON min_score=true", {"json": {"instruction": "red", "min_score": True}}, 400, "invalid-request", "min_score"),
    (
        "bad filter",
        {"files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")}, "data": {"filter": "{"}},
        400,
        "invalid-request",
        "JSON object",
    ),
    (
        "filter value with a control character",
        {
            "files": {"image": ("q.png", png_bytes((1, 2, 3)), "image/png")},
            "data": {"filter": '{"title": "a\\u0007b"}'},
        },
        400,
        "invalid-request",
        "control character",
    ),
]


@pytest.mark.parametrize(("name", "request_kwargs", "status", "problem_type", "hint"), CASES, ids=[c[0] for c in CASES])
def test_bad_search_input_is_refused_with_a_problem(
    stack: Stack,
    indexed: dict[str, bytes],
    name: str,
    request_kwargs: dict[str, Any],
    status: int,
    problem_type: str,
    hint: str,
) -> None:
    before = stored_requests(stack)
    with stack.http() as http:
        response = http.post("/v1/searches", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == problem_type and body["status"] == status
    assert hint in body["detail"], body
    assert stored_requests(stack) == before, "a refused request must not create or queue a job"


def test_unknown_job_id_is_not_found(stack: Stack) -> None:
    with stack.http() as http:
        for path in (
            "/v1/jobs/0123456789abcdef0123456789abcdef",
            "/v1/jobs/not-a-job",
            "/v1/jobs/0123456789abcdef0123456789abcdef/panorama",
        ):
            response = http.get(path)
            assert response.status_code == 404, path
            assert response.json()["type"] == "not-found"
        assert http.delete("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
        assert http.get("/v1/jobs/0123456789abcdef0123456789abcdef", params={"wait": 999}).status_code == 400


def _damaged_collection(stack: Stack) -> list[str]:
    """A collection of three images whose stored files were then damaged on disk: one truncated, one replaced by
    text, one intact. Returns their ids in that order."""
    images = [png_bytes((200, 10 * i, 10), size=(120, 90), pattern=i) for i in range(3)]
    with stack.http() as http:
        response = http.post(
            "/v1/collections/damaged/images",
            files=[("files", (f"d{i}.png", d, "image/png")) for i, d in enumerate(images)],
        )
        assert wait_for_job(http, response.json()["id"])["status"] == "succeeded"
    ids = [sha256_id(data) for data in images]
    media = stack.log_dir / "data" / "media" / "damaged"
    truncated, replaced = (media / ids[0][:2] / f"{ids[0]}.png"), (media / ids[1][:2] / f"{ids[1]}.png")
    truncated.write_bytes(images[0][:100])
    replaced.write_bytes(b"this is not an image any more")
    return ids


def _sent_straight_to_the_queues(stack: Stack) -> dict[str, list[str]]:
    """Tasks no gateway would send: unknown jobs, wrong arguments. Returns the task ids sent, by task name."""
    app = create_celery(Settings(redis_url=stack.redis_url))
    bad_args: list[tuple[TaskName, list[Any]]] = [
        (TaskName.SEARCH, ["0" * 32]),
        (TaskName.SEARCH, []),
        (TaskName.INDEX, ["f" * 32, 0]),
        (TaskName.INDEX, ["not a job id", "not a chunk"]),
        (TaskName.DELETE_IMAGE, ["e" * 32]),
        (TaskName.RERANK, ["d" * 32]),
        (TaskName.RERANK, [{"a": "dict"}, 1, 2]),
    ]
    sent: dict[str, list[str]] = {}
    for task, args in bad_args:
        result = app.send_task(task.value, args=args, queue=TASK_QUEUES[task].value)
        sent.setdefault(task.value, []).append(result.id)
    return sent


def _ended(stack: Stack, worker: str, task: str) -> set[str]:
    log = stack.services[worker].log_text()
    return set(task_ids(log, task, "succeeded")) | set(task_ids(log, task, "raised"))


def _all_ended(stack: Stack, worker: str, task: str, ids: list[str]) -> bool:
    return set(ids) <= _ended(stack, worker, task)


def test_workers_survive_bad_work_that_reaches_them(stack: Stack, indexed: dict[str, bytes]) -> None:
    """Requests the gateway refuses never reach a worker; these do: damaged stored images and malformed tasks."""
    workers = {name: stack.pool_children(name) for name in ("embedder", "reranker")}
    assert all(workers.values()), workers
    truncated, replaced, intact = _damaged_collection(stack)
    with stack.http() as http:
        for damaged in (truncated, replaced):
            response = http.post("/v1/searches", json={"image_id": damaged, "collection": "damaged"})
            assert response.status_code == 202, response.text
            job = wait_for_job(http, response.json()["id"])
            assert job["status"] == "failed", job
            assert job["error"]["status"] >= 400 and job["error"]["detail"], job
        # The reranker draws the damaged candidates as placeholders and still ranks all three.
        response = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((200, 10, 10), size=(120, 90)), "image/png")},
            data={"collection": "damaged", "instruction": "damaged candidates"},
        )
        reranked = wait_for_job(http, response.json()["id"])
        assert reranked["status"] == "succeeded", reranked
        assert reranked["result"]["rerank"]["status"] == "applied", reranked["result"]["rerank"]
        assert {c["id"] for c in reranked["result"]["candidates"]} == {truncated, replaced, intact}

    sent = _sent_straight_to_the_queues(stack)
    for task, ids in sent.items():
        worker = "reranker" if task == TaskName.RERANK.value else "embedder"
        wait_until(
            functools.partial(_all_ended, stack, worker, task, ids),
            60,
            f"the workers to end the malformed {task} tasks",
            services=[stack.services[worker]],
        )

    # No process died: the same pool processes still serve, and a normal search goes all the way through.
    assert {name: stack.pool_children(name) for name in workers} == workers
    with stack.http() as http:
        assert http.get("/readyz?full=1").status_code == 200
        response = http.post(
            "/v1/searches",
            files={"image": ("q.png", png_bytes((1, 2, 3)), "image/png")},
            data={"instruction": "after the bad work"},
        )
        assert wait_for_job(http, response.json()["id"])["result"]["rerank"]["status"] == "applied"


def test_decompression_bombs_in_an_index_upload_are_listed_as_failed_and_not_stored(stack: Stack) -> None:
    good = png_bytes((5, 66, 7), pattern=2)
    # 100 million pixels: over MMRAG_MAX_IMAGE_PIXELS (50 million); 400 million: over Pillow's own bomb guard too.
    bombs = {"bomb-100mp.png": _huge_png(10_000, 10_000), "bomb-400mp.png": _huge_png()}
    with stack.http() as http:
        files = [("files", ("good.png", good, "image/png"))]
        files += [("files", (name, data, "image/png")) for name, data in bombs.items()]
        response = http.post("/v1/collections/bombed/images", files=files)
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
        only_bombs = http.post("/v1/collections/bombed/images", files=files[1:])
        bombs_job = wait_for_job(http, only_bombs.json()["id"])
    assert job["status"] == "succeeded", job
    assert (job["result"]["indexed"], job["result"]["failed"]) == (1, 2)
    reasons = {failure["filename"]: failure["reason"] for failure in job["progress"]["failed"]}
    assert "MMRAG_MAX_IMAGE_PIXELS" in reasons["bomb-100mp.png"], reasons
    assert "decompression bomb" in reasons["bomb-400mp.png"], reasons
    assert bombs_job["status"] == "failed" and bombs_job["error"]["type"] == "invalid-image", bombs_job
    media = stack.log_dir / "data" / "media" / "bombed"
    assert list(media.rglob(f"{sha256_id(good)}.*"))
    assert not [path for data in bombs.values() for path in media.rglob(f"{sha256_id(data)}.*")]


def test_index_upload_reports_corrupt_files_and_indexes_the_rest(stack: Stack, indexed: dict[str, bytes]) -> None:
    files = [
        ("files", ("good.png", png_bytes((5, 6, 7)), "image/png")),
        ("files", ("broken.jpg", _jpeg()[:200], "image/jpeg")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
    ]
    with stack.http() as http:
        response = http.post("/v1/collections/scratch/images", files=files)
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
    assert job["status"] == "succeeded", job
    progress = job["progress"]
    assert isinstance(progress, dict)
    assert progress["done"] == progress["total"] == 3
    assert sorted(f["filename"] for f in progress["failed"]) == ["broken.jpg", "notes.txt"]
    assert job["result"] == {**job["result"], "indexed": 1, "duplicates": 0, "failed": 2}


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [(b'{"filename": "a.png"}\nnot json\n', "metadata line 2: not JSON"), (b'["a.png"]', "metadata line 1: each line")],
    ids=["not JSON", "no filename"],
)
def test_bad_metadata_is_refused_naming_the_line_before_anything_is_stored(
    stack: Stack, metadata: bytes, reason: str
) -> None:
    image = png_bytes((11, 22, 33), pattern=4)
    before = stored_requests(stack)
    with stack.http() as http:
        response = http.post(
            "/v1/collections/scratch/images",
            files=[("files", ("a.png", image, "image/png")), ("metadata", ("m.jsonl", metadata, "application/jsonl"))],
        )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "invalid-request" and reason in response.json()["detail"]
    assert stored_requests(stack) == before
    assert not list((stack.log_dir / "data" / "media").rglob(f"{sha256_id(image)}.*"))
