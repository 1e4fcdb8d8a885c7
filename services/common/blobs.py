"""Short-lived binary objects in Redis (uploaded query images, panoramas), expiring with their job."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

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
