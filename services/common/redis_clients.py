"""Redis clients for the workers: commands ride out a Redis restart instead of failing the stage they finish.

A worker that has done its work (a VLM answer, an index chunk's vectors) and cannot write the result because Redis
is restarting retries the write with backoff for about half a minute, then gives up with the error (the job
then ends through its owner's lease lapsing and recovery, or the broker's redelivery). Writes are safe to
repeat: every job store script checks the record's state first, and a search claim picks up again what an
earlier, interrupted claim of the same process took (search_claims.py).
The gateway keeps redis-py's default: a client should get a quick 503, not a request that hangs.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

# 0.05, 0.1, 0.2 … capped at 2 s: about 30 s over 20 retries, which covers a restart with an AOF to load.
WORKER_RETRIES = 20


def worker_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), WORKER_RETRIES),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        health_check_interval=10,
    )
