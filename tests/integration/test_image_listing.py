"""GET /v1/collections/{name}/images: pages in a stable order, each image once, even while others are indexed."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack, png_bytes, sha256_id, wait_for_job

pytestmark = pytest.mark.integration


def _images(seed: int, count: int) -> list[tuple[str, bytes]]:
    return [
        (
            f"l{seed}_{i}.png",
            png_bytes(((seed * 41 + i * 7) % 256, (i * 5) % 256, (seed * 13 + i) % 256), pattern=i % 6),
        )
        for i in range(count)
    ]


def _upload(http: httpx.Client, collection: str, images: list[tuple[str, bytes]], metadata: str = "") -> str:
    files = [("files", (name, data, "image/png")) for name, data in images]
    if metadata:
        files.append(("metadata", ("meta.jsonl", metadata.encode(), "application/jsonl")))
    response = http.post(f"/v1/collections/{collection}/images", files=files)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _walk(http: httpx.Client, collection: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = http.get(f"/v1/collections/{collection}/images", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        if page["next"] is None:
            return items
        assert page["next"] == page["items"][-1]["id"]
        cursor = page["next"]


def test_pages_list_every_image_once_in_id_order_with_its_metadata(stack: Stack) -> None:
    images = _images(1, 7)
    metadata = "\n".join(
        json.dumps({"filename": name, "title": f"<b>{name}</b>", "n": i}) for i, (name, _) in enumerate(images)
    )
    with stack.http() as http:
        job = wait_for_job(http, _upload(http, "listing_basic", images[:6], metadata))
        assert job["status"] == "succeeded", (job, stack.logs())
        # The same bytes again with other metadata: the first stays, as it does in the index.
        wait_for_job(http, _upload(http, "listing_basic", images, metadata.replace("<b>", "<i>")))

        first = http.get("/v1/collections/listing_basic/images", params={"limit": 3}).json()
        items = _walk(http, "listing_basic", 3)
        default_page = http.get("/v1/collections/listing_basic/images").json()
        image = http.get(items[0]["image_url"])

    expected = {sha256_id(data): (i, name) for i, (name, data) in enumerate(images)}
    assert [item["id"] for item in items] == sorted(expected)
    assert len(first["items"]) == 3 and first["next"] == first["items"][2]["id"]
    for item in items:
        i, name = expected[item["id"]]
        tag = "<i>" if i == 6 else "<b>"
        assert item["metadata"] == {"title": f"{tag}{name}</b>", "n": i}
        assert item["image_url"] == f"/v1/collections/listing_basic/images/{item['id']}"
    assert default_page == {"items": items, "next": None}
    assert image.status_code == 200 and sha256_id(image.content) == items[0]["id"]


@pytest.mark.parametrize(
    ("query", "fix"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-an-id"}, "cursor must be the `next` value"),
        ({"cursor": "A" * 64}, "cursor must be the `next` value"),
    ],
)
def test_a_bad_limit_or_cursor_is_a_400_saying_what_to_fix(stack: Stack, query: dict[str, str], fix: str) -> None:
    with stack.http() as http:
        response = http.get("/v1/collections/listing_basic/images", params=query)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "invalid-request"
    assert fix in response.json()["detail"]


def test_an_unknown_collection_is_a_404(stack: Stack) -> None:
    with stack.http() as http:
        response = http.get("/v1/collections/no_such_listing/images")
    assert response.status_code == 404
    assert response.json()["type"] == "not-found"


def test_paging_while_another_index_job_runs_lists_each_existing_image_exactly_once(stack: Stack) -> None:
    existing = _images(2, 30)
    arriving = _images(3, 150)
    with stack.http() as http:
        job = wait_for_job(http, _upload(http, "listing_busy", existing))
        assert job["status"] == "succeeded", (job, stack.logs())
        existing_ids = {sha256_id(data) for _, data in existing}

        # The second upload runs in another thread: its files land in the media store while the pages are read.
        arriving_job: list[str] = []

        def upload_more() -> None:
            with stack.http() as other:
                arriving_job.append(_upload(other, "listing_busy", arriving))

        uploader = threading.Thread(target=upload_more)
        uploader.start()
        walks_during = 0
        try:
            while True:
                busy = uploader.is_alive() or (
                    bool(arriving_job)
                    and http.get(f"/v1/jobs/{arriving_job[0]}").json()["status"] in ("queued", "running")
                )
                ids = [item["id"] for item in _walk(http, "listing_busy", 7)]
                assert ids == sorted(set(ids)), "ids repeated or out of order"
                assert existing_ids <= set(ids), "an image present throughout was missed"
                if not busy:
                    break
                walks_during += 1
        finally:
            uploader.join()
        final = wait_for_job(http, arriving_job[0])
        ids_after = [item["id"] for item in _walk(http, "listing_busy", 50)]
        default_page = http.get("/v1/collections/listing_busy/images").json()
        largest_page = http.get("/v1/collections/listing_busy/images", params={"limit": 500}).json()

    assert walks_during >= 1, "no walk overlapped the upload and indexing"
    assert final["status"] == "succeeded", (final, stack.logs())
    assert ids_after == sorted(existing_ids | {sha256_id(data) for _, data in arriving})
    # Without a limit, a page holds 50 images; 500 is the most a page may hold (all 180 here, and no next page).
    assert [item["id"] for item in default_page["items"]] == ids_after[:50] and default_page["next"] == ids_after[49]
    assert [item["id"] for item in largest_page["items"]] == ids_after and largest_page["next"] is None
