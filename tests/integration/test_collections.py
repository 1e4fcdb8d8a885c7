"""Collections over HTTP: idempotent re-indexing, the model guard, stored images, and deleting one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from services.common.collections import CollectionInfo, CollectionRegistry
from tests.integration.conftest import Stack, png_bytes, sha256_id, wait_for_job

pytestmark = pytest.mark.integration

OTHER_MODEL = "bge-visualized-m3"
OTHER_DIM = 1024


def _images(seed: int, count: int) -> list[tuple[str, bytes]]:
    return [
        (f"c{seed}_{i}.png", png_bytes(((seed * 71 + i * 29) % 256, (i * 113) % 256, seed % 256), pattern=i % 4))
        for i in range(count)
    ]


def _index(http: httpx.Client, collection: str, images: list[tuple[str, bytes]]) -> dict[str, Any]:
    response = http.post(
        f"/v1/collections/{collection}/images", files=[("files", (n, d, "image/png")) for n, d in images]
    )
    assert response.status_code == 202, response.text
    return dict(wait_for_job(http, response.json()["id"]))


def _search(http: httpx.Client, collection: str, image: bytes, limit: int = 50) -> dict[str, Any]:
    response = http.post(
        "/v1/searches",
        files={"image": ("q.png", image, "image/png")},
        data={"collection": collection, "rerank": "false", "limit": str(limit)},
    )
    assert response.status_code == 202, response.text
    return dict(wait_for_job(http, response.json()["id"]))


def _count(http: httpx.Client, collection: str) -> int:
    return int(http.get(f"/v1/collections/{collection}").json()["count"])


@pytest.fixture
def registry(stack: Stack) -> Iterator[CollectionRegistry]:
    client = redis.Redis.from_url(stack.redis_url)
    yield CollectionRegistry(client)
    client.close()


@pytest.fixture
def collection(request: pytest.FixtureRequest, registry: CollectionRegistry) -> Iterator[str]:
    """A collection named after the test, dropped from the registry afterwards so listings stay as they were."""
    name = "t_" + request.node.name.removeprefix("test_")[:40]
    yield name
    registry.remove(name)


def test_reindexing_the_same_images_is_idempotent(stack: Stack, collection: str) -> None:
    images = _images(1, 6)
    with stack.http() as http:
        first = _index(http, collection, images)
        assert first["status"] == "succeeded", (first, stack.logs())
        assert (first["result"]["indexed"], first["result"]["duplicates"]) == (6, 0)
        assert _count(http, collection) == 6

        second = _index(http, collection, images)
        assert second["status"] == "succeeded", (second, stack.logs())
        assert (second["result"]["indexed"], second["result"]["duplicates"], second["result"]["failed"]) == (0, 6, 0)
        assert second["progress"]["done"] == second["progress"]["total"] == 6
        assert _count(http, collection) == 6


def test_a_collection_of_another_model_fails_index_and_search_jobs_naming_both(
    stack: Stack, collection: str, registry: CollectionRegistry
) -> None:
    images = _images(2, 3)
    with stack.http() as http:
        assert _index(http, collection, images)["status"] == "succeeded"
        # As if this collection had been filled by an embedder running another model.
        registry.put(
            CollectionInfo(
                name=collection,
                count=3,
                dim=OTHER_DIM,
                model=OTHER_MODEL,
                metric="COSINE",
                created_at=datetime.now(UTC),
            )
        )
        searched = _search(http, collection, images[0][1])
        indexed = _index(http, collection, _images(3, 2))

    for job in (searched, indexed):
        assert job["status"] == "failed", job
        assert job["error"]["type"] == "invalid-request"
        detail = job["error"]["detail"]
        assert OTHER_MODEL in detail and "tiny-random" in detail, detail
        assert f"MMRAG_MODEL={OTHER_MODEL}" in detail


def test_a_stored_image_is_served_as_its_bytes(stack: Stack, collection: str) -> None:
    images = _images(4, 2)
    with stack.http() as http:
        assert _index(http, collection, images)["status"] == "succeeded"
        for _, data in images:
            response = http.get(f"/v1/collections/{collection}/images/{sha256_id(data)}")
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/png"
            assert response.content == data
        missing = http.get(f"/v1/collections/{collection}/images/{'0' * 64}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"] == "not-found"


def test_deleting_an_image_removes_its_vector_and_its_file(stack: Stack, collection: str) -> None:
    images = _images(5, 4)
    gone, kept = images[0][1], images[1][1]
    with stack.http() as http:
        assert _index(http, collection, images)["status"] == "succeeded"
        before = _search(http, collection, gone)
        assert before["result"]["candidates"][0]["id"] == sha256_id(gone)

        response = http.delete(f"/v1/collections/{collection}/images/{sha256_id(gone)}")
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
        job = wait_for_job(http, response.json()["id"])
        assert job["status"] == "succeeded", (job, stack.logs())
        assert job["result"] == {"collection": collection, "image_id": sha256_id(gone), "removed": True}

        assert _count(http, collection) == 3
        after = _search(http, collection, gone)
        assert after["status"] == "succeeded"
        ids = [c["id"] for c in after["result"]["candidates"]]
        assert sha256_id(gone) not in ids
        assert sorted(ids) == sorted(sha256_id(data) for _, data in images[1:])
        assert http.get(f"/v1/collections/{collection}/images/{sha256_id(gone)}").status_code == 404
        assert http.get(f"/v1/collections/{collection}/images/{sha256_id(kept)}").status_code == 200
        again = http.delete(f"/v1/collections/{collection}/images/{sha256_id(gone)}")
    assert again.status_code == 404 and again.json()["type"] == "not-found"
