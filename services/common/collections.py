"""The collection registry in Redis: what the gateway knows about collections without touching Milvus.

The embedder owns Milvus and writes here whenever a collection is created or changes size; the gateway
reads it to answer `GET /v1/collections` and to reject searches of unknown collections before queueing.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel

from services.common.errors import InvalidRequest

REGISTRY_KEY = "mmrag:collections"
# Names an upload is about to create (score: when the reservation lapses), counted against MMRAG_MAX_COLLECTIONS
# until the embedder registers them: the registry alone would let a burst of uploads to new names past the cap.
RESERVED_KEY = "mmrag:collections:reserved"
# \Z, not $: `$` also matches before a trailing newline, and "evil\n" became a Milvus collection and a directory.
COLLECTION_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")

# Atomic, so that concurrent uploads to new names cannot pass the cap together. Returns 1 when `name` may be used
# (it exists, was reserved, or fits under the cap and is now reserved), 0 when it would be one too many.
_RESERVE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return 1
end
local count = redis.call('HLEN', KEYS[1])
for _, reserved in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('HEXISTS', KEYS[1], reserved) == 0 then count = count + 1 end
end
if count >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""


class CollectionInfo(BaseModel):
    name: str
    count: int
    dim: int
    model: str
    metric: str
    created_at: datetime


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME_PATTERN.fullmatch(name):
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
            self._redis.zrem(RESERVED_KEY, info.name)  # counted as registered from now on
            return info
        existing = self.get(info.name)
        return existing if existing is not None else info

    def put(self, info: CollectionInfo) -> None:
        self._redis.hset(REGISTRY_KEY, info.name, info.model_dump_json())

    def remove(self, name: str) -> None:
        self._redis.hdel(REGISTRY_KEY, name)
        self._redis.zrem(RESERVED_KEY, name)


class AsyncCollectionRegistry:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def get(self, name: str) -> CollectionInfo | None:
        raw = await self._redis.hget(REGISTRY_KEY, name)
        return CollectionInfo.model_validate_json(raw) if raw else None

    async def reserve(self, name: str, *, max_collections: int, ttl_s: float) -> bool:
        """Whether `name` may be indexed into without passing `max_collections`; a new name is reserved for `ttl_s`
        (the life of the job that creates it) and counts against the cap from now on."""
        now = time.time()
        allowed = await self._redis.eval(
            _RESERVE_SCRIPT, 2, REGISTRY_KEY, RESERVED_KEY, name, now, now + ttl_s, max_collections
        )
        return bool(allowed)

    async def release(self, name: str) -> None:
        """Drop a reservation that no index job will use (every file of its upload was refused)."""
        await self._redis.zrem(RESERVED_KEY, name)

    async def all(self) -> list[CollectionInfo]:
        raw = await self._redis.hgetall(REGISTRY_KEY)
        return sorted((CollectionInfo.model_validate_json(v) for v in raw.values()), key=lambda c: c.name)
