"""What checking an API key costs a request: the gateway's key lookup with its short cache and without it, and the
Redis rate-limit hit a key with a rate adds. Median (p50) and p99 in microseconds, one asyncio client on a private
redis-server, the same code the gateway runs (services/gateway/auth.py, rate_limits.py).

Prints one JSON object. Run: `PYTHONPATH=. python3 bench/auth.py`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402 - after the path set-up
import redis.asyncio as aioredis  # noqa: E402

from services.common.api_keys import AsyncKeyStore, KeyStore  # noqa: E402
from services.gateway.auth import KEY_CACHE_TTL_S, Authenticator  # noqa: E402
from services.gateway.rate_limits import RateLimiter  # noqa: E402
from tests.support.processes import start_redis  # noqa: E402

CALLS = 5000
WARMUP = 200


async def _timings_us(call: Callable[[], Awaitable[object]]) -> dict[str, float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(CALLS):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return {"p50_us": round(statistics.median(samples), 1), "p99_us": round(samples[int(len(samples) * 0.99)], 1)}


async def measure(redis_url: str) -> dict[str, object]:
    sync_client = redis.Redis.from_url(redis_url)
    secret, _ = KeyStore(sync_client).create("bench", ["search"], rate="1000000/second")
    sync_client.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = AsyncKeyStore(client)
        cached = Authenticator(keys, None, cache_ttl_s=KEY_CACHE_TTL_S)
        uncached = Authenticator(keys, None, cache_ttl_s=0.0)
        limiter = RateLimiter(client, redis_url)
        principal = await cached.principal(secret)
        assert principal is not None

        async def check_and_count() -> None:
            found = await cached.principal(secret)
            assert found is not None
            await limiter.check(found)

        return {
            "key_check_cached": await _timings_us(lambda: cached.principal(secret)),
            "key_check_uncached": await _timings_us(lambda: uncached.principal(secret)),
            "rate_limit_hit": await _timings_us(lambda: limiter.check(principal)),
            "key_check_cached_plus_rate_limit": await _timings_us(check_and_count),
        }
    finally:
        await client.aclose()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mmrag-bench-auth-") as folder:
        service, url = start_redis(Path(folder))
        try:
            results = asyncio.run(measure(url))
        finally:
            service.stop()
    print(
        json.dumps(
            {
                "bench": "auth",
                "calls": CALLS,
                "cache_ttl_s": KEY_CACHE_TTL_S,
                "python": platform.python_version(),
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
