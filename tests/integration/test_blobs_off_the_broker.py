"""Large query images never stay in the broker Redis (which runs with noeviction): they are files in the media
store, deleted once their job is done; panoramas are files too, still served by the gateway."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import redis
from PIL import Image

from tests.integration.conftest import Stack, wait_for_job

pytestmark = pytest.mark.integration

LARGE_KEY_BYTES = 1024 * 1024


def noise_png(seed: int, size: tuple[int, int] = (1100, 900)) -> bytes:
    """A PNG that does not compress: about 3 MB."""
    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    image.putpixel((0, 0), (seed % 256, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def largest_keys(client: redis.Redis) -> list[tuple[str, int]]:
    sizes = []
    for key in client.scan_iter(count=1000):
        usage = client.memory_usage(key)
        sizes.append((key.decode(errors="replace"), int(usage or 0)))
    return sorted(sizes, key=lambda item: -item[1])[:5]


def test_searches_with_large_images_leave_no_large_key_in_redis(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
    broker = redis.Redis.from_url(stack.redis_url)
    blob_dir = Path(stack.env["MMRAG_DATA_DIR"]) / "media" / "_blobs"
    jobs = []
    with stack.http() as http:
        for seed in range(4):
            data = noise_png(seed)
            assert len(data) > 2 * LARGE_KEY_BYTES
            response = http.post(
                "/v1/searches",
                files={"image": ("big.png", data, "image/png")},
                data={"instruction": "the same in blue", "limit": "3", "rerank": "true" if seed % 2 else "false"},
            )
            assert response.status_code == 202, response.text
            jobs.append(response.json()["id"])
        finals = [wait_for_job(http, job_id, timeout_s=120) for job_id in jobs]
        assert all(final["status"] == "succeeded" for final in finals), (finals, stack.logs())
        reranked = [job_id for i, job_id in enumerate(jobs) if i % 2]
        for job_id in reranked:
            panorama = http.get(f"/v1/jobs/{job_id}/panorama")
            assert panorama.status_code == 200 and panorama.headers["content-type"] == "image/jpeg"

    largest = largest_keys(broker)
    assert largest and largest[0][1] < LARGE_KEY_BYTES, largest
    # A reranked job is done with its query image: deleted. The panorama stays until the job TTL.
    for job_id in reranked:
        assert not (blob_dir / "query" / job_id).exists()
        assert (blob_dir / "panorama" / job_id).is_file()
