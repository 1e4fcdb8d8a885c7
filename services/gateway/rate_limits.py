"""Per-key rate limits, counted in Redis so that every gateway replica shares them.

A moving window (the `limits` library's, one Lua script per request): exact, so a key with 10/minute gets ten
requests in any sixty seconds, never twenty across a window boundary. It keeps one timestamp per request in the
window, which is small for the rates a key is given (N/second or N/minute).
"""

from __future__ import annotations

import time
from functools import lru_cache

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from services.common.errors import RateLimited
from services.gateway.auth import Principal

KEY_PREFIX = "mmrag:rate"


@lru_cache(maxsize=1024)
def _item(rate: str) -> RateLimitItem:
    return parse(rate)


def _storage_uri(redis_url: str) -> str:
    # The storage takes its connections from the gateway's pool; the URI only has to name the kind of server.
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


class RateLimiter:
    def __init__(self, client: aioredis.Redis, redis_url: str) -> None:
        storage = RedisStorage(
            _storage_uri(redis_url),
            implementation="redispy",
            key_prefix=KEY_PREFIX,
            connection_pool=client.connection_pool,  # type: ignore[arg-type]  # the options are typed too narrowly
        )
        self._limiter = MovingWindowRateLimiter(storage)

    async def check(self, principal: Principal) -> None:
        """Count one request of the key; 429 with the wait until the window has room, if it is over its rate."""
        if principal.rate is None or principal.name is None:
            return
        item = _item(principal.rate)
        if await self._limiter.hit(item, principal.name):
            return
        stats = await self._limiter.get_window_stats(item, principal.name)
        raise RateLimited(
            f"this API key is over its rate of {principal.rate}: retry after the Retry-After seconds",
            retry_after_s=max(stats.reset_time - time.time(), 1.0),
        )
