"""Dynamic batching of searches as claims in the job store, with every guarantee of one-job-per-message kept.

The gateway puts every new search job in a pending set (job_store.PENDING_SEARCHES_KEY, oldest first) and sends
its message as before. The search task that starts claims, in one Lua script, its own job and up to
`MMRAG_SEARCH_BATCH_SIZE - 1` other pending searches: each goes queued → running/embedding with this process as
its owner. The worker embeds them in one forward pass; the claimed jobs' own messages later find them taken and
return at once. So:
- a lone search claims only itself and waits for nothing (no batching window, as in text-embeddings-inference);
- under load, the searches that arrived while the model was busy ride together in the next pass;
- each message stays a normal Celery task: prefetch 1, time limits applied, acknowledged alone (which is why
  celery-batches, with its high prefetch, no time limits and batch-wide acks, is not used);
- a batch whose owner died is taken over: the owner holds a lease (heartbeat.start_lease), and a job whose
  owner's lease has lapsed can be claimed again, by its own redelivered message or by the work recovery sends
  (gateway/recovery.py reads the per-owner sets of ownership.py). The job store's fencing refuses writes from an owner
  that lost its claim, so every job ends once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from services.common.heartbeat import LEASE_PREFIX
from services.common.job_store import ACTIVE_JOBS_KEY, CHANNEL_PREFIX, KEY_PREFIX, PENDING_SEARCHES_KEY
from services.common.ownership import WorkItem, WorkKind, owned_key

# KEYS: pending set, active set, this owner's set. ARGV: own job id ('' for none), most jobs to claim, owner,
# now (ISO), now (s), job key prefix, channel prefix, lease prefix, owned-set TTL (s).
# Returns {outcome for the own job, claimed ids...}; the outcome is 'claimed', 'none', 'missing', 'owned' (by a
# live process) or what the job is now ('reranking', 'succeeded', ...).
_CLAIM_SCRIPT = """
local function take(id)
  local key = ARGV[6] .. id
  local now = redis.call('HMGET', key, 'status', 'stage', 'owner', 'kind')
  local status, stage, owner = now[1], now[2], now[3]
  if not status then
    redis.call('ZREM', KEYS[1], id)
    return 'missing'
  end
  if now[4] ~= 'search' then return 'not-a-search' end
  if status == 'running' and (stage == 'embedding' or stage == 'searching') then
    -- Taken before: again only if its owner is this process (its earlier run is over) or has lost its lease.
    if owner ~= ARGV[3] and owner and redis.call('EXISTS', ARGV[8] .. owner) == 1 then return 'owned' end
  elseif status ~= 'queued' then
    redis.call('ZREM', KEYS[1], id)
    if status == 'running' then return stage end
    return status
  end
  redis.call('HSET', key, 'status', 'running', 'stage', 'embedding', 'owner', ARGV[3], 'updated_at', ARGV[4],
             'claimed_ts', ARGV[5])
  redis.call('HINCRBY', key, 'attempts.search', 1)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[5], id)
  redis.call('SADD', KEYS[3], 'search:' .. id)
  redis.call('PUBLISH', ARGV[7] .. id, 'running')
  return 'claimed'
end

local limit = tonumber(ARGV[2])
local claimed = {}
local own = 'none'
if ARGV[1] ~= '' then
  own = take(ARGV[1])
  if own == 'claimed' then table.insert(claimed, ARGV[1]) end
end
-- A process runs one batch at a time, so searches it still holds from an earlier claim were left behind (that
-- claim's reply was lost to a dropped connection and retried, or its batch died with an error): take them again.
for _, item in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if string.sub(item, 1, 7) == 'search:' then
    local id = string.sub(item, 8)
    if id ~= ARGV[1] and #claimed < limit then
      if take(id) == 'claimed' then
        table.insert(claimed, id)
      else
        redis.call('SREM', KEYS[3], item)  -- ended, handed on, or taken by another process since
      end
    end
  end
end
-- Look a little past the limit: some pending entries are jobs canceled or expired since.
local waiting = redis.call('ZRANGE', KEYS[1], 0, limit * 2)
for _, id in ipairs(waiting) do
  if #claimed >= limit then break end
  if id ~= ARGV[1] and take(id) == 'claimed' then table.insert(claimed, id) end
end
if #claimed > 0 then redis.call('EXPIRE', KEYS[3], ARGV[9]) end
table.insert(claimed, 1, own)
return claimed
"""


@dataclass(frozen=True)
class Claim:
    own: str  # what became of the task's own job: 'claimed', 'owned', 'reranking', 'succeeded', ...
    job_ids: list[str]  # every job claimed, the own job first when it was claimed


class SearchClaims:
    """Claims of pending search jobs by one worker process (`owner`)."""

    def __init__(self, client: redis.Redis, owner: str, ttl_s: int) -> None:
        self._redis = client
        self.owner = owner
        self._ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM_SCRIPT)

    def waiting(self) -> int:
        """How many searches wait to be claimed (one cheap read: called between the batches of index chunks)."""
        return int(self._redis.zcard(PENDING_SEARCHES_KEY))

    def claim(self, own_job_id: str | None, limit: int) -> Claim:
        now = time.time()
        reply = self._claim(
            keys=[PENDING_SEARCHES_KEY, ACTIVE_JOBS_KEY, owned_key(self.owner)],
            args=[
                own_job_id or "",
                str(limit),
                self.owner,
                datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                repr(now),
                KEY_PREFIX,
                CHANNEL_PREFIX,
                LEASE_PREFIX,
                str(self._ttl_s),
            ],
        )
        decoded = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
        return Claim(own=decoded[0], job_ids=decoded[1:])

    def release(self, job_ids: Sequence[str]) -> None:
        """These jobs have left the stage this process claimed (finished, failed or handed to the reranker)."""
        if job_ids:
            self._redis.srem(owned_key(self.owner), *(str(WorkItem(WorkKind.SEARCH, i)) for i in job_ids))
