"""Whether a new job may start: backpressure for everyone, and a cap on each key's active jobs.

Past `MMRAG_MAX_QUEUED_JOBS`, new jobs of the kind whose backlog is full get 503 with Retry-After rather than
waiting without bound. The search backlog is the searches no worker has taken yet (the job store's pending set);
the index backlog is the index jobs not yet finished (a job's chunks wait in the queue while it runs).
A key with `MMRAG_MAX_ACTIVE_JOBS_PER_KEY` queued or running jobs gets 429 for its next one.

The counted sets hold job ids and are trimmed lazily, at the next admission, by reading each job's status: no
worker has to report back, and an id whose record expired simply drops out.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from services.common.errors import RateLimited, Unavailable
from services.common.job_store import KEY_PREFIX as JOB_KEY_PREFIX
from services.common.job_store import PENDING_SEARCHES_KEY
from services.common.jobs import JobKind
from services.common.settings import Settings
from services.gateway.auth import Principal

UNFINISHED_INDEX_JOBS_KEY = "mmrag:index-jobs:unfinished"
KEY_JOBS_PREFIX = "mmrag:key-jobs:"
# An admitted id whose record is not there yet counts this long: the request is still creating it.
CREATION_GRACE_S = 60
# A search backlog drains in seconds; an index backlog in minutes.
RETRY_AFTER_S = {JobKind.SEARCH: 5.0, JobKind.INDEX: 30.0}
ACTIVE_JOB_RETRY_AFTER_S = 5.0

# KEYS: the sets to count. ARGV: job id ('' to check only), now (s), job key prefix, grace (s), TTL (s), then one cap
# per set. Returns 0 once the id is added to every set, else the 1-based index of the first set at its cap (nothing
# added).
_ADMIT_SCRIPT = """
local now, grace = tonumber(ARGV[2]), tonumber(ARGV[4])
local function active(set)
  local count = 0
  local members = redis.call('ZRANGE', set, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local status = redis.call('HGET', ARGV[3] .. members[i], 'status')
    if status == 'queued' or status == 'running' or (not status and tonumber(members[i + 1]) > now - grace) then
      count = count + 1
    else
      redis.call('ZREM', set, members[i])
    end
  end
  return count
end
for i, set in ipairs(KEYS) do
  if active(set) >= tonumber(ARGV[5 + i]) then return i end
end
if ARGV[1] == '' then return 0 end
for _, set in ipairs(KEYS) do
  redis.call('ZADD', set, ARGV[2], ARGV[1])
  redis.call('EXPIRE', set, ARGV[5])
end
return 0
"""


class Admission:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings
        self._admit = client.register_script(_ADMIT_SCRIPT)

    async def search_backlog(self) -> int:
        return int(await self._redis.zcard(PENDING_SEARCHES_KEY))

    async def admit(self, principal: Principal, kind: JobKind, job_id: str | None) -> None:
        """Count `job_id` against its kind's backlog and its key, or refuse it (503 or 429) counting nothing.
        With None, only check: a request that reads a large upload first asks before reading it."""
        limit = self._settings.max_queued_jobs
        if kind is JobKind.SEARCH and (waiting := await self.search_backlog()) >= limit:
            raise Unavailable(
                f"{waiting} searches are waiting for a worker (MMRAG_MAX_QUEUED_JOBS={limit}): retry shortly",
                retry_after_s=RETRY_AFTER_S[kind],
            )
        sets: list[tuple[str, int]] = []
        if kind is JobKind.INDEX:
            sets.append((UNFINISHED_INDEX_JOBS_KEY, limit))
        if principal.name is not None:
            sets.append((KEY_JOBS_PREFIX + principal.name, self._settings.max_active_jobs_per_key))
        if not sets:
            return
        args: list[str | int] = [job_id or "", repr(time.time()), JOB_KEY_PREFIX, CREATION_GRACE_S]
        args += [self._settings.job_ttl_s, *(cap for _, cap in sets)]
        refused = int(await self._admit(keys=[key for key, _ in sets], args=args))
        if refused == 0:
            return
        key, cap = sets[refused - 1]
        if key == UNFINISHED_INDEX_JOBS_KEY:
            raise Unavailable(
                f"{cap} index jobs are unfinished (MMRAG_MAX_QUEUED_JOBS={cap}): retry once some have finished",
                retry_after_s=RETRY_AFTER_S[JobKind.INDEX],
            )
        raise RateLimited(
            f"this API key has {cap} jobs queued or running (MMRAG_MAX_ACTIVE_JOBS_PER_KEY={cap}): wait for one "
            "to finish, or cancel one",
            retry_after_s=ACTIVE_JOB_RETRY_AFTER_S,
        )
