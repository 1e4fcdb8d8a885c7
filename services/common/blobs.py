"""Short-lived binary objects in Redis (uploaded query images, panoramas), expiring with their job."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from services.common.jobs import SearchParams
from services.common.media import MediaStore

BLOB_PREFIX = "mmrag:blob:"


def query_blob_id(job_id: str) -> str:
    return f"query:{job_id}"


def panorama_blob_id(job_id: str) -> str:
    return f"panorama:{job_id}"


class BlobStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    def put(self, blob_id: str, data: bytes) -> None:
        self._redis.set(BLOB_PREFIX + blob_id, data, ex=self._ttl_s)

    def get(self, blob_id: str) -> bytes | None:
        data: bytes | None = self._redis.get(BLOB_PREFIX + blob_id)  # type: ignore[assignment]
        return data


class AsyncBlobStore:
    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    async def put(self, blob_id: str, data: bytes) -> None:
        await self._redis.set(BLOB_PREFIX + blob_id, data, ex=self._ttl_s)

    async def get(self, blob_id: str) -> bytes | None:
        data = await self._redis.get(BLOB_PREFIX + blob_id)
        return data if isinstance(data, bytes) else None


def read_query_image(params: SearchParams, blobs: BlobStore, media: MediaStore) -> bytes | None:
    """A search's query image: the uploaded blob, or the indexed image it names; None once it is gone."""
    if params.query.blob_id is not None:
        return blobs.get(params.query.blob_id)
    assert params.query.image_id is not None
    return media.read(params.collection, params.query.image_id)
