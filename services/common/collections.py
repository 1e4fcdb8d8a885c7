"""The collection registry in Redis: what the gateway knows about collections without touching Milvus.

The embedder owns Milvus and writes here whenever a collection is created or changes size; the gateway
reads it to answer `GET /v1/collections` and to reject searches of unknown collections before queueing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel

from services.common.errors import InvalidRequest

REGISTRY_KEY = "mmrag:collections"
COLLECTION_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


class CollectionInfo(BaseModel):
    name: str
    count: int
    dim: int
    model: str
    metric: str
    created_at: datetime


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME_PATTERN.match(name):
        raise InvalidRequest(
            f"collection name {name[:80]!r} is not valid: use 1–63 letters, digits or underscores, "
            "starting with a letter"
        )
    return name


def new_collection_info(name: str, *, dim: int, model: str, metric: str = "COSINE") -> CollectionInfo:
    return CollectionInfo(name=name, count=0, dim=dim, model=model, metric=metric, created_at=datetime.now(UTC))


class CollectionRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def get(self, name: str) -> CollectionInfo | None:
        raw = self._redis.hget(REGISTRY_KEY, name)
        return CollectionInfo.model_validate_json(raw) if raw else None

    def create_if_absent(self, info: CollectionInfo) -> CollectionInfo:
        """Register a new collection; if another process registered it first, theirs stands."""
        if self._redis.hsetnx(REGISTRY_KEY, info.name, info.model_dump_json()):
            return info
        existing = self.get(info.name)
        return existing if existing is not None else info

    def put(self, info: CollectionInfo) -> None:
        self._redis.hset(REGISTRY_KEY, info.name, info.model_dump_json())

    def remove(self, name: str) -> None:
        self._redis.hdel(REGISTRY_KEY, name)


class AsyncCollectionRegistry:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def get(self, name: str) -> CollectionInfo | None:
        raw = await self._redis.hget(REGISTRY_KEY, name)
        return CollectionInfo.model_validate_json(raw) if raw else None

    async def all(self) -> list[CollectionInfo]:
        raw = await self._redis.hgetall(REGISTRY_KEY)
        return sorted((CollectionInfo.model_validate_json(v) for v in raw.values()), key=lambda c: c.name)
