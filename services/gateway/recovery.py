"""Recovering jobs whose work was lost with a worker, so that no job waits forever.

Two passes, run by one gateway at a time:
- Dead owners (every few seconds). A worker process holds the work it runs (search batches, reranks, index
  chunks, deletes: services/common/ownership.py) while its lease lives. When a process dies with its host, its
  container or a SIGKILL, its lease lapses within MMRAG_LEASE_TTL_S and the work it held that is still
  outstanding is sent again: the next claim takes it over. A worker that is slow but alive renews its lease, so
  its work is never sent twice.
- Silence (the backstop). Redis as a Celery broker has one gap: a worker takes a message off the queue (BRPOP) and
  only then records it as unacknowledged. A worker killed between the two loses the message, and the visibility
  timeout never brings it back. So active jobs that have not changed for longer than the visibility timeout (by
  then Redis has redelivered everything it knew about) get their outstanding work sent again.
Every task is idempotent against the job record, so if the work was only waiting in a long queue, the extra
message is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from services.common.broken_workers import broken_workers_async
from services.common.errors import Unavailable
from services.common.heartbeat import lease_key, live_consumers
from services.common.jobs import ACTIVE_STATUSES, JobKind, JobStage, JobStatus
from services.common.ownership import OWNED_PREFIX, WorkItem, WorkKind
from services.common.queues import TASK_QUEUES, Queue, TaskName
from services.gateway.state import GatewayState

log = logging.getLogger(__name__)
LOCK_KEY = "mmrag:recovery-lock"
MAX_INTERVAL_S = 30.0
MAX_OWNER_CHECK_INTERVAL_S = 5.0
NO_CONSUMER_PREFIX = "mmrag:no-consumer-since:"
# Several owner-check periods: the mark survives a missed pass, and lapses when no gateway looks any more.
NO_CONSUMER_MARK_TTL_S = 12 * MAX_OWNER_CHECK_INTERVAL_S


def outstanding_work(record: Mapping[str, str], finished_chunks: set[int]) -> list[tuple[TaskName, list[Any]]]:
    """The tasks that move an active job on from where its record says it is."""
    job_id = record["id"]
    kind = JobKind(record["kind"])
    if kind is JobKind.SEARCH:
        task = TaskName.RERANK if record["stage"] == JobStage.RERANKING.value else TaskName.SEARCH
        return [(task, [job_id])]
    if kind is JobKind.DELETE:
        return [(TaskName.DELETE_IMAGE, [job_id])]
    missing = [n for n in range(int(record.get("chunks_total", 0))) if n not in finished_chunks]
    # Every chunk in but the job not ended: any chunk delivered again ends it.
    return [(TaskName.INDEX, [job_id, n]) for n in missing or [0]]


async def _send_outstanding(state: GatewayState, record: Mapping[str, str], consumers: Mapping[Queue, int]) -> int:
    """Send the work that moves `record` on; 0 when nobody would take it now (tried again next period)."""
    job_id = record["id"]
    finished = await state.jobs.finished_chunks(job_id) if record["kind"] == JobKind.INDEX.value else set()
    work = outstanding_work(record, finished)
    if not all(consumers[TASK_QUEUES[task]] for task, _ in work):
        return 0  # /readyz says so; recovery tries again once a consumer is back
    for task, args in work:
        await state.send(task, *args)
    await state.jobs.mark_active(job_id)
    return len(work)


async def _consumers(state: GatewayState) -> dict[Queue, int]:
    return {queue: await live_consumers(state.redis, queue.value) for queue in Queue}


def outstanding_item(
    item: WorkItem, record: Mapping[str, str] | None, owner: str, finished_chunks: set[int]
) -> tuple[TaskName, list[Any]] | None:
    """The task that redoes `item`, held by the dead process `owner`, if it is still to be done."""
    if record is None or JobStatus(record["status"]) not in ACTIVE_STATUSES:
        return None
    held_by_owner = record.get("owner") == owner
    stage = record["stage"]
    if item.kind is WorkKind.SEARCH:
        if held_by_owner and stage in (JobStage.EMBEDDING.value, JobStage.SEARCHING.value):
            return TaskName.SEARCH, [item.job_id]
        if stage == JobStage.RERANKING.value and not record.get("owner"):
            return TaskName.RERANK, [item.job_id]  # handed over, but its rerank task may not have been sent
        return None
    if item.kind is WorkKind.RERANK:
        return (TaskName.RERANK, [item.job_id]) if held_by_owner and stage == JobStage.RERANKING.value else None
    if item.kind is WorkKind.INDEX:
        return None if item.chunk in finished_chunks else (TaskName.INDEX, [item.job_id, item.chunk])
    return TaskName.DELETE_IMAGE, [item.job_id]


async def recover_dead_owners(state: GatewayState) -> int:
    """Send again the outstanding work held by every worker process whose lease has lapsed."""
    consumers: dict[Queue, int] | None = None
    recovered = 0
    async for raw_key in state.redis.scan_iter(match=f"{OWNED_PREFIX}*", count=100):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        owner = key.removeprefix(OWNED_PREFIX)
        if await state.redis.exists(lease_key(owner)):
            continue
        consumers = consumers or await _consumers(state)
        waiting = False
        for raw_item in await state.redis.smembers(key):
            item = WorkItem.parse(raw_item.decode() if isinstance(raw_item, bytes) else str(raw_item))
            record = await state.jobs.raw(item.job_id)
            finished = await state.jobs.finished_chunks(item.job_id) if item.kind is WorkKind.INDEX else set()
            work = outstanding_item(item, record, owner, finished)
            if work is None:
                continue
            task, args = work
            if not consumers[TASK_QUEUES[task]]:
                waiting = True  # nobody would take it now (/readyz says so): tried again next period
                continue
            await state.send(task, *args)
            await state.jobs.mark_active(item.job_id)
            recovered += 1
            log.warning(
                "[job %s] its worker process %s is gone (lease lapsed) while it held %s: sent %s again",
                item.job_id,
                owner,
                item,
                task.value,
            )
        if not waiting:
            await state.redis.delete(key)
    return recovered


async def recover_silent_jobs(state: GatewayState) -> int:
    """Send again the outstanding work of every job silent for longer than the visibility timeout."""
    silent_for_s = state.settings.effective_visibility_timeout_s
    consumers = await _consumers(state)
    recovered = 0
    for job_id in await state.jobs.silent_jobs(silent_for_s):
        record = await state.jobs.raw(job_id)
        if record is None:
            await state.jobs.forget_active(job_id)
            continue
        sent = await _send_outstanding(state, record, consumers)
        if not sent:
            continue
        recovered += 1
        log.warning(
            "[job %s] no change for over %.0f s in stage %s: sent %d task(s) again (lost with a killed worker?)",
            job_id,
            silent_for_s,
            record["stage"],
            sent,
        )
    return recovered


def _queue_and_limit(record: Mapping[str, str], state: GatewayState) -> tuple[Queue, float]:
    kind = JobKind(record["kind"])
    if kind is JobKind.INDEX:
        return TASK_QUEUES[TaskName.INDEX], state.settings.index_time_limit_s
    task = TaskName.SEARCH if kind is JobKind.SEARCH else TaskName.DELETE_IMAGE
    return TASK_QUEUES[task], state.settings.search_time_limit_s


async def _without_consumer_since(state: GatewayState, consumers: Mapping[Queue, int]) -> dict[Queue, float]:
    """For each queue with no live consumer now, since when recovery has seen it without one.

    Kept in Redis, so that any gateway's pass carries on the count. The mark lapses when recovery stops looking
    (every gateway down): a mark older than what anyone saw could otherwise fail jobs the moment one is back.
    """
    now = time.time()
    async with state.redis.pipeline(transaction=False) as pipe:  # one round trip per pass, whatever the queues
        for queue, count in consumers.items():
            key = f"{NO_CONSUMER_PREFIX}{queue.value}"
            if count:
                pipe.delete(key)
            else:
                pipe.set(key, repr(now), nx=True)
                pipe.pexpire(key, int(NO_CONSUMER_MARK_TTL_S * 1000))
                pipe.get(key)
        replies = iter(await pipe.execute())
    since: dict[Queue, float] = {}
    for queue, count in consumers.items():
        if count:
            next(replies)
            continue
        _set, _expire, raw = next(replies), next(replies), next(replies)
        since[queue] = float(raw) if raw is not None else now
    return since


def starved(created_ts: float, without_consumer_since: float | None, limit_s: float, now: float) -> bool:
    """Whether a queued job has had no worker able to take it for its whole time limit: it has waited that long,
    and so has its queue without a live consumer (None: the queue has one now)."""
    return without_consumer_since is not None and now - max(created_ts, without_consumer_since) >= limit_s


async def fail_starved_jobs(state: GatewayState) -> int:
    """End, as `unavailable`, the queued jobs that no worker able to serve could have taken for their whole time
    limit: the job has waited that long, and its queue has had no live consumer for that long. Until then they
    wait: a worker that cannot serve stops instead of failing them, and a job that waited behind a busy worker
    which then died gets the full limit for a replacement to start."""
    without_since = await _without_consumer_since(state, await _consumers(state))
    if not without_since:
        return 0
    shortest = min(state.settings.search_time_limit_s, state.settings.index_time_limit_s)
    broken = await broken_workers_async(state.redis)
    failed = 0
    for job_id in await state.jobs.silent_jobs(shortest):
        record = await state.jobs.raw(job_id)
        if record is None or record["status"] != JobStatus.QUEUED.value:
            continue
        queue, limit_s = _queue_and_limit(record, state)
        if not starved(float(record["created_ts"]), without_since.get(queue), limit_s, time.time()):
            continue
        why = "".join(f"; worker {node} stopped: {reason}" for node, reason in sorted(broken.items()))
        error = Unavailable(
            f"no worker able to serve took this job within {limit_s:.0f} s (queue {queue.value!r} has no live "
            f"consumer{why}): retry once a worker is up"
        )
        await state.jobs.fail(job_id, error.to_problem())
        failed += 1
        log.warning("[job %s] failed: %s", job_id, error.detail)
    return failed


async def _once_per_period(state: GatewayState, name: str, period_s: float) -> bool:
    """True for one gateway per period: with several replicas, only one of them recovers each time."""
    return bool(await state.redis.set(f"{LOCK_KEY}:{name}", "1", nx=True, px=max(500, int(period_s * 1000) - 100)))


async def run_recovery(state: GatewayState) -> None:
    """Check for dead owners every few seconds and for silent jobs every third of the visibility timeout."""
    owner_interval_s = max(0.5, min(MAX_OWNER_CHECK_INTERVAL_S, state.settings.lease_ttl_s / 3))
    silent_interval_s = max(1.0, min(MAX_INTERVAL_S, state.settings.effective_visibility_timeout_s / 3))
    next_silent_check = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            if await _once_per_period(state, "owners", owner_interval_s):
                await recover_dead_owners(state)
                await fail_starved_jobs(state)
            if loop.time() >= next_silent_check:
                next_silent_check = loop.time() + silent_interval_s
                if await _once_per_period(state, "silent", silent_interval_s):
                    await recover_silent_jobs(state)
        except Exception:  # Redis down, broker refusing: recovery waits for the next period, the gateway serves on
            log.exception("job recovery failed; trying again in %.0f s", owner_interval_s)
        await asyncio.sleep(owner_interval_s)
