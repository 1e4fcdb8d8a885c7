"""Who runs what: each worker process records the work it holds, so that a dead process's work is sent again.

A process holds its work while its lease lives (heartbeat.start_lease, `mmrag:lease:<owner>`). The work it holds
is a set per owner (`mmrag:owned:<owner>`) of items:
- `search:<job>`: a search it claimed (search_claims.py), until the job ends or goes to the reranker;
- `rerank:<job>`: a search it reranks;
- `index:<job>:<chunk>`: an index chunk it indexes;
- `delete:<job>`: an image removal.
The gateway's recovery (gateway/recovery.py) reads the sets of owners whose lease has lapsed and sends each item
that is still outstanding again. A slow but live process keeps renewing its lease, so its work is never sent
twice; writes of a search or a rerank are fenced by owner in the job store, so a process that lost its claim
cannot change the job any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis

from services.common.heartbeat import LEASE_PREFIX
from services.common.job_store import KEY_PREFIX

OWNED_PREFIX = "mmrag:owned:"

# Take a job's current stage for this process: only an active job in `stage` whose owner is nobody, this
# process, or a process whose lease has lapsed. KEYS: job, owned set. ARGV: stage, owner, lease prefix, item, TTL.
_CLAIM_STAGE = """
local now = redis.call('HMGET', KEYS[1], 'status', 'stage', 'owner')
if not now[1] or (now[1] ~= 'queued' and now[1] ~= 'running') or now[2] ~= ARGV[1] then return 0 end
local owner = now[3]
if owner and owner ~= '' and owner ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. owner) == 1 then return -1 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


class WorkKind(StrEnum):
    SEARCH = "search"
    RERANK = "rerank"
    INDEX = "index"
    DELETE = "delete"


@dataclass(frozen=True)
class WorkItem:
    kind: WorkKind
    job_id: str
    chunk: int | None = None

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.job_id}" + ("" if self.chunk is None else f":{self.chunk}")

    @classmethod
    def parse(cls, text: str) -> WorkItem:
        kind, job_id, *rest = text.split(":")
        return cls(WorkKind(kind), job_id, int(rest[0]) if rest else None)


def owned_key(owner: str) -> str:
    """The set of work items `owner` holds."""
    return f"{OWNED_PREFIX}{owner}"


class Ownership:
    """The work one worker process holds."""

    def __init__(self, client: redis.Redis, owner: str, ttl_s: int) -> None:
        self._redis = client
        self.owner = owner
        self._ttl_s = ttl_s  # the set outlives any job it names, and no longer
        self._claim_stage = client.register_script(_CLAIM_STAGE)

    def claim_stage(self, item: WorkItem, stage: str) -> bool | None:
        """Own `item`'s job in `stage`: True; None when another live process owns it; False when the job is no
        longer in that stage (ended, canceled, moved on)."""
        outcome = int(
            self._claim_stage(
                keys=[f"{KEY_PREFIX}{item.job_id}", owned_key(self.owner)],
                args=[stage, self.owner, LEASE_PREFIX, str(item), str(self._ttl_s)],
            )
        )
        return None if outcome < 0 else bool(outcome)

    def hold(self, *items: WorkItem) -> None:
        if items:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(owned_key(self.owner), *(str(item) for item in items))
                pipe.expire(owned_key(self.owner), self._ttl_s)
                pipe.execute()

    def release(self, *items: WorkItem) -> None:
        if items:
            self._redis.srem(owned_key(self.owner), *(str(item) for item in items))
