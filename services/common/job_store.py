"""Job records in Redis: one hash per job with a TTL, updated atomically, with a change notification.

The record is the truth about a job (Celery's own state says PENDING for ids it never saw). Every write goes
through one Lua script that checks the current status first, so a canceled or finished job is never
overwritten by a late or redelivered task, and publishes on the job's channel so long-polls wake up.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import redis
import redis.asyncio as aioredis

from services.common.errors import NotFound
from services.common.job_metrics import METRICS_KEY, TERMINAL_LUA, submitted_field
from services.common.jobs import (
    ACTIVE_STATUSES,
    FailedItem,
    Job,
    JobKind,
    JobStage,
    JobStatus,
    Progress,
    Timings,
)
from services.common.logs import request_id_var

KEY_PREFIX = "mmrag:job:"
CHANNEL_PREFIX = "mmrag:job-events:"

ACTIVE_JOBS_KEY = "mmrag:jobs:active"
# Search jobs not yet claimed by a worker, scored by creation time (oldest first).
PENDING_SEARCHES_KEY = "mmrag:searches:pending"

# Shared by the scripts below. ARGV[n] of each script: see its call. `failed` is a JSON list to append.
_APPEND_FAILED = """
local failed = cjson.decode(ARGV[5])
if #failed > 0 then
  local current = cjson.decode(redis.call('HGET', KEYS[1], 'failed') or '[]')
  if next(current) == nil then current = {} end
  for _, item in ipairs(failed) do table.insert(current, item) end
  redis.call('HSET', KEYS[1], 'failed', cjson.encode(current))
end
"""
# Every active job sits in ACTIVE_JOBS_KEY, scored by when it last changed: what recovery reads (recovery.py).
_TRACK_ACTIVITY = """
local status_now = redis.call('HGET', KEYS[1], 'status')
if status_now == 'queued' or status_now == 'running' then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
else
  redis.call('ZREM', KEYS[3], ARGV[6])
end
redis.call('PUBLISH', KEYS[2], status_now)
"""

# KEYS: job, channel, active set, metrics hash. ARGV: allowed statuses, now (ISO), fields, increments, failed,
# job id, now (s), owner ('' = any).
_UPDATE_SCRIPT = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[6])
  return -1
end
local status = redis.call('HGET', KEYS[1], 'status')
if ARGV[1] ~= '' then
  local allowed = false
  for s in string.gmatch(ARGV[1], '[^,]+') do
    if s == status then allowed = true end
  end
  if not allowed then return 0 end
end
-- Fencing: a stage claimed by an owner is written only by that owner. One whose lease lapsed and whose work was
-- taken over (search_claims.py) can no longer write over its successor.
if ARGV[8] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[8] then return 0 end
for k, v in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[1], k, v) end
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HINCRBY', KEYS[1], k, v) end
"""
    + _APPEND_FAILED
    + """
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
"""
    # A job ends here once, however often its work is delivered: its metrics are counted here (job_metrics.py).
    + TERMINAL_LUA
    + _TRACK_ACTIVITY
    + """
return 1
"""
)

# A chunk of an index job counts once, however often it is delivered: the set of finished chunks decides.
# KEYS: job, channel, active set, finished chunks. ARGV: chunk, TTL, now (ISO), increments, failed, job id, now (s).
_CHUNK_SCRIPT = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' and status ~= 'queued' then return 0 end
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[4], ARGV[2])
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HINCRBY', KEYS[1], k, v) end
"""
    + _APPEND_FAILED
    + """
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
"""
    + _TRACK_ACTIVITY
    + """
if redis.call('SCARD', KEYS[4]) >= tonumber(redis.call('HGET', KEYS[1], 'chunks_total')) then return 2 end
return 1
"""
)


CANCELED_PROBLEM = {
    "type": "invalid-request",
    "title": "Canceled",
    "status": 400,
    "detail": "the job was canceled by a client (DELETE /v1/jobs/{id})",
}


# HINCRBY alone would recreate an expired job as a hash without a TTL: count only on a live record.
_INCREMENT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


class JobNotFound(NotFound):
    """The job id is unknown, or its record expired."""


class UpdateResult(IntEnum):
    MISSING = -1
    REFUSED = 0  # the job was not in an allowed status (canceled, finished, already moved on)
    APPLIED = 1
    LAST_CHUNK = 2


def new_job_id() -> str:
    return secrets.token_hex(16)


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}"


def job_channel(job_id: str) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


def _chunks_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:chunks"


def _chunk_items_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:chunk-items"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    encoded: dict[str, str] = {}
    for name, value in fields.items():
        if isinstance(value, str):
            encoded[name] = value
        elif hasattr(value, "model_dump"):
            encoded[name] = json.dumps(value.model_dump(mode="json"))
        else:
            encoded[name] = json.dumps(value)
    return encoded


def _status_list(statuses: Iterable[JobStatus] | None) -> str:
    return "" if statuses is None else ",".join(s.value for s in statuses)


def _json_list(raw: str | None) -> list[Any]:
    value = json.loads(raw) if raw else []
    return value if isinstance(value, list) else []  # cjson writes an empty list as {}


def _as_text(record: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in record.items()
    }


def decode_job(raw: Mapping[Any, Any]) -> Job:
    record = _as_text(raw)
    timings = {name.removeprefix("timing."): float(v) for name, v in record.items() if name.startswith("timing.")}
    return Job(
        id=record["id"],
        kind=JobKind(record["kind"]),
        status=JobStatus(record["status"]),
        stage=JobStage(record["stage"]),
        created_at=datetime.fromisoformat(record["created_at"]),
        updated_at=datetime.fromisoformat(record["updated_at"]),
        progress=Progress(
            done=int(record.get("progress_done", 0)),
            total=int(record.get("progress_total", 0)),
            failed=[FailedItem.model_validate(item) for item in _json_list(record.get("failed"))],
        ),
        timings_ms=Timings.model_validate(timings),
        result=json.loads(record["result"]) if record.get("result") else None,
        error=json.loads(record["error"]) if record.get("error") else None,
    )


def new_record(job_id: str, kind: JobKind, params: Any, *, total: int = 0, chunks: int = 0) -> dict[str, str]:
    now = _now_iso()
    return _encode_fields(
        {
            "id": job_id,
            "kind": kind.value,
            "status": JobStatus.QUEUED.value,
            "stage": JobStage.QUEUED.value,
            "created_at": now,
            "updated_at": now,
            "created_ts": repr(time.time()),
            "params": params,
            "progress_done": 0,
            "progress_total": total,
            "chunks_total": chunks,
            "failed": [],
            # The HTTP request that created the job, for the workers' log lines (gateway/request_ids.py).
            "request_id": request_id_var.get() or "",
        }
    )


def _update_call(
    job_id: str,
    *,
    allowed: Iterable[JobStatus] | None,
    fields: Mapping[str, Any] | None = None,
    increments: Mapping[str, int] | None = None,
    failed: Iterable[FailedItem] = (),
    owner: str | None = None,
) -> tuple[list[str], list[str]]:
    """Keys and arguments of _UPDATE_SCRIPT, for the synchronous and the asynchronous store alike."""
    keys = [job_key(job_id), job_channel(job_id), ACTIVE_JOBS_KEY, METRICS_KEY]
    args = [
        _status_list(allowed),
        _now_iso(),
        json.dumps(_encode_fields(fields or {})),
        json.dumps(dict(increments or {})),
        _failed_json(failed),
        job_id,
        repr(time.time()),
        owner or "",
    ]
    return keys, args


def _failed_json(failed: Iterable[FailedItem]) -> str:
    return json.dumps([item.model_dump(mode="json") for item in failed])


def total_ms(record: Mapping[str, str]) -> float:
    """Milliseconds since the job was created (wall clock: the stages run in different processes)."""
    return (time.time() - float(record["created_ts"])) * 1000


def timing_fields(**timings_ms: float) -> dict[str, str]:
    return {f"timing.{name}": f"{value:.3f}" for name, value in timings_ms.items()}


def _queue_create(pipe: Any, record: Mapping[str, str], ttl_s: int, chunk_items: Sequence[Any]) -> None:
    """The commands that create a job, for a sync or an async pipeline (both buffer commands the same way)."""
    job_id = record["id"]
    pipe.hset(job_key(job_id), mapping=dict(record))
    pipe.expire(job_key(job_id), ttl_s)
    pipe.zadd(ACTIVE_JOBS_KEY, {job_id: time.time()})
    pipe.hincrby(METRICS_KEY, submitted_field(record["kind"]), 1)
    if record["kind"] == JobKind.SEARCH.value:
        # Where a running search batch finds the searches waiting to join it (search_claims.py).
        pipe.zadd(PENDING_SEARCHES_KEY, {job_id: float(record["created_ts"])})
    if chunk_items:
        # The chunks of an index job live here, not only in their messages, so that lost work can be sent again.
        items = {str(number): json.dumps(chunk) for number, chunk in enumerate(chunk_items)}
        pipe.hset(_chunk_items_key(job_id), mapping=items)
        pipe.expire(_chunk_items_key(job_id), ttl_s)


class JobStore:
    """Synchronous access, for the workers."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._update = client.register_script(_UPDATE_SCRIPT)
        self._chunk = client.register_script(_CHUNK_SCRIPT)
        self._increment = client.register_script(_INCREMENT_SCRIPT)

    def create(self, record: Mapping[str, str], chunk_items: Sequence[Any] = ()) -> None:
        with self._redis.pipeline(transaction=True) as pipe:
            _queue_create(pipe, record, self._ttl_s, chunk_items)
            pipe.execute()

    def raw(self, job_id: str) -> dict[str, str]:
        record = self._redis.hgetall(job_key(job_id))
        if not record:
            raise JobNotFound(f"job {job_id} does not exist or has expired")
        return _as_text(record)

    def status(self, job_id: str) -> JobStatus:
        status = self._redis.hget(job_key(job_id), "status")
        if status is None:
            raise JobNotFound(f"job {job_id} does not exist or has expired")
        return JobStatus(status.decode() if isinstance(status, bytes) else status)

    def params(self, job_id: str) -> str:
        return self.raw(job_id)["params"]

    def get(self, job_id: str) -> Job:
        return decode_job(self.raw(job_id))

    def update(
        self,
        job_id: str,
        *,
        allowed: Iterable[JobStatus] | None = ACTIVE_STATUSES,
        fields: Mapping[str, Any] | None = None,
        increments: Mapping[str, int] | None = None,
        failed: Iterable[FailedItem] = (),
        owner: str | None = None,
    ) -> UpdateResult:
        """Apply the change only while the job's status is one of `allowed` (None: any status) and, with `owner`,
        only while that process owns the job's stage."""
        keys, args = _update_call(
            job_id, allowed=allowed, fields=fields, increments=increments, failed=failed, owner=owner
        )
        return UpdateResult(int(self._update(keys=keys, args=args)))

    def update_many(
        self, changes: Mapping[str, Mapping[str, Any]], *, owner: str | None = None
    ) -> dict[str, UpdateResult]:
        """`update` of several active jobs (job id → fields) in one round trip; the outcome per job."""
        if not changes:
            return {}
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id, fields in changes.items():
                keys, args = _update_call(job_id, allowed=ACTIVE_STATUSES, fields=fields, owner=owner)
                self._update(keys=keys, args=args, client=pipe)
            outcomes = pipe.execute()
        return {job_id: UpdateResult(int(o)) for job_id, o in zip(changes, outcomes, strict=True)}

    def active_job_ids(self) -> list[str]:
        """Every job queued or running now (for a collection drop, which ends the index jobs on it)."""
        return [i.decode() if isinstance(i, bytes) else str(i) for i in self._redis.zrange(ACTIVE_JOBS_KEY, 0, -1)]

    def raw_many(self, job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The records of several jobs in one round trip; expired ones are left out."""
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            records = pipe.execute()
        return {job_id: _as_text(record) for job_id, record in zip(job_ids, records, strict=True) if record}

    def increment(self, job_id: str, field: str) -> int:
        """Add one to a counter of the job and return it; JobNotFound if the job is gone."""
        value = int(self._increment(keys=[job_key(job_id)], args=[field]))
        if value < 0:
            raise JobNotFound(f"job {job_id} does not exist or has expired")
        return value

    def uncount(self, job_id: str, field: str) -> None:
        """Take back one `increment` (an attempt that ended cleanly and will be retried is not a worker death)."""
        self._redis.hincrby(job_key(job_id), field, -1)

    def chunk_items(self, job_id: str, chunk: int) -> list[Any]:
        """The items of one chunk of an index job; JobNotFound once they are gone with the job."""
        raw = self._redis.hget(_chunk_items_key(job_id), str(chunk))
        if raw is None:
            raise JobNotFound(f"chunk {chunk} of job {job_id} does not exist or has expired")
        items: list[Any] = json.loads(raw)
        return items

    def chunk_done(self, job_id: str, chunk: int) -> bool:
        return bool(self._redis.sismember(_chunks_key(job_id), str(chunk)))

    def finished_chunks(self, job_id: str) -> set[int]:
        return {int(chunk) for chunk in self._redis.smembers(_chunks_key(job_id))}

    def forget_chunk_items(self, job_id: str) -> None:
        """Drop an index job's chunk items once it has ended: only recovery needs them."""
        self._redis.delete(_chunk_items_key(job_id))

    def complete_chunk(
        self, job_id: str, chunk: int, *, increments: Mapping[str, int], failed: Iterable[FailedItem] = ()
    ) -> UpdateResult:
        outcome = self._chunk(
            keys=[job_key(job_id), job_channel(job_id), ACTIVE_JOBS_KEY, _chunks_key(job_id)],
            args=[
                str(chunk),
                str(self._ttl_s),
                _now_iso(),
                json.dumps(dict(increments)),
                _failed_json(failed),
                job_id,
                repr(time.time()),
            ],
        )
        return UpdateResult(int(outcome))


class AsyncJobStore:
    """Asynchronous access, for the gateway: create, read, cancel, and wait for a change."""

    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._update = client.register_script(_UPDATE_SCRIPT)

    async def create(self, record: Mapping[str, str], chunk_items: Sequence[Any] = ()) -> None:
        """Store a new job; `chunk_items` are an index job's chunks (each a JSON-able list of items)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            _queue_create(pipe, record, self._ttl_s, chunk_items)
            await pipe.execute()

    async def get(self, job_id: str) -> Job:
        record = await self._redis.hgetall(job_key(job_id))
        if not record:
            raise JobNotFound(f"job {job_id} does not exist or has expired")
        return decode_job(record)

    async def _end(self, job_id: str, status: JobStatus, error: Mapping[str, Any]) -> UpdateResult:
        fields = {"status": status.value, "stage": JobStage.DONE.value, "error": dict(error)}
        keys, args = _update_call(job_id, allowed=ACTIVE_STATUSES, fields=fields)
        return UpdateResult(int(await self._update(keys=keys, args=args)))

    async def cancel(self, job_id: str) -> Job:
        """End an active job as canceled; a finished job is returned unchanged."""
        await self._end(job_id, JobStatus.CANCELED, CANCELED_PROBLEM)
        return await self.get(job_id)

    async def fail(self, job_id: str, error: Mapping[str, Any]) -> None:
        await self._end(job_id, JobStatus.FAILED, error)

    async def record_failures(self, job_id: str, failed: list[FailedItem]) -> None:
        """Count items rejected before any worker saw them as processed, with their reasons."""
        if not failed:
            return
        increments = {"progress_done": len(failed)}
        keys, args = _update_call(job_id, allowed=ACTIVE_STATUSES, increments=increments, failed=failed)
        await self._update(keys=keys, args=args)

    async def silent_jobs(self, silent_for_s: float, limit: int = 200) -> list[str]:
        """Ids of active jobs that have not changed for `silent_for_s` seconds, the longest silent first."""
        ids = await self._redis.zrangebyscore(ACTIVE_JOBS_KEY, "-inf", time.time() - silent_for_s, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def raw(self, job_id: str) -> dict[str, str] | None:
        record = await self._redis.hgetall(job_key(job_id))
        return _as_text(record) if record else None

    async def finished_chunks(self, job_id: str) -> set[int]:
        return {int(chunk) for chunk in await self._redis.smembers(_chunks_key(job_id))}

    async def mark_active(self, job_id: str) -> None:
        """Count `job_id` as changed now (after its work was sent again), so it gets a full period to move."""
        await self._redis.zadd(ACTIVE_JOBS_KEY, {job_id: time.time()}, xx=True)

    async def forget_active(self, job_id: str) -> None:
        """Drop an id whose record expired: the job can no longer be recovered nor polled."""
        await self._redis.zrem(ACTIVE_JOBS_KEY, job_id)
