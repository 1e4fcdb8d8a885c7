"""Bad input gets a 4xx problem+json that says what to fix; nothing is queued and no worker crashes."""

from __future__ import annotations

import io
import zlib
from typing import Any

import pytest
import redis
from PIL import Image

from services.common.queues import Queue
from tests.integration.conftest import Stack, png_bytes, sha256_id


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
    ("no image", {"data": {"instruction": "blue"}}, 400, "invalid-request", "exactly one query image"),
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


def _queued(stack: Stack) -> tuple[int, int]:
    client = redis.Redis.from_url(stack.redis_url)
    jobs = sum(1 for key in client.scan_iter("mmrag:job:*") if b":chunks" not in key)
    return sum(int(client.llen(queue.value)) for queue in Queue), jobs


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
    before = _queued(stack)
    with stack.http() as http:
        response = http.post("/v1/searches", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == problem_type and body["status"] == status
    assert hint in body["detail"], body
    assert _queued(stack) == before, "a refused request must not create or queue a job"


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


def test_workers_survive_bad_input(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.http() as http:
        for _, request_kwargs, *_ in CASES:
            http.post("/v1/searches", **request_kwargs)
        assert http.get("/readyz?full=1").status_code == 200
    assert stack.services["embedder"].alive() and stack.services["reranker"].alive()


def test_index_upload_reports_corrupt_files_and_indexes_the_rest(stack: Stack, indexed: dict[str, bytes]) -> None:
    from tests.integration.conftest import wait_for_job

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
    assert job["result"] == {**job["result"], "indexed": 1, "duplicates": 0, "failed": 2}  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [(b'{"filename": "a.png"}\nnot json\n', "metadata line 2: not JSON"), (b'["a.png"]', "metadata line 1: each line")],
    ids=["not JSON", "no filename"],
)
def test_bad_metadata_is_refused_naming_the_line_before_anything_is_stored(
    stack: Stack, metadata: bytes, reason: str
) -> None:
    image = png_bytes((11, 22, 33), pattern=4)
    before = _queued(stack)
    with stack.http() as http:
        response = http.post(
            "/v1/collections/scratch/images",
            files=[("files", ("a.png", image, "image/png")), ("metadata", ("m.jsonl", metadata, "application/jsonl"))],
        )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "invalid-request" and reason in response.json()["detail"]
    assert _queued(stack) == before
    assert not list((stack.log_dir / "data" / "media").rglob(f"{sha256_id(image)}.*"))
