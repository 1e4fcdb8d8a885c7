"""Recovering jobs whose task messages were lost, so that no job waits forever.

Redis as a Celery broker has one gap: a worker takes a message off the queue (BRPOP) and only then records it as
unacknowledged. A worker killed between the two loses the message, and the visibility timeout never brings it
back. So the gateway looks for active jobs that have not changed for longer than the visibility timeout (by
then Redis has redelivered everything it knew about) and sends their outstanding work again. Every task is
idempotent against the job record, so if the work was only waiting in a long queue, the extra message is a
cheap no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from services.common.heartbeat import live_consumers
from services.common.jobs import JobKind, JobStage
from services.common.queues import TASK_QUEUES, Queue, TaskName
from services.gateway.state import GatewayState

log = logging.getLogger(__name__)
LOCK_KEY = "mmrag:recovery-lock"
MAX_INTERVAL_S = 30.0


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


async def recover_silent_jobs(state: GatewayState) -> int:
    """Send again the outstanding work of every job silent for longer than the visibility timeout."""
    silent_for_s = state.settings.effective_visibility_timeout_s
    consumers = {queue: await live_consumers(state.redis, queue.value) for queue in Queue}
    recovered = 0
    for job_id in await state.jobs.silent_jobs(silent_for_s):
        record = await state.jobs.raw(job_id)
        if record is None:
            await state.jobs.forget_active(job_id)
            continue
        finished = await state.jobs.finished_chunks(job_id) if record["kind"] == JobKind.INDEX.value else set()
        work = outstanding_work(record, finished)
        if not all(consumers[TASK_QUEUES[task]] for task, _ in work):
            continue  # nobody would take it now (/readyz says so); it is tried again once a consumer is back
        for task, args in work:
            await state.send(task, *args)
        await state.jobs.mark_active(job_id)
        recovered += 1
        log.warning(
            "[job %s] no change for over %.0f s in stage %s: sent %d task(s) again (lost with a killed worker?)",
            job_id,
            silent_for_s,
            record["stage"],
            len(work),
        )
    return recovered


async def run_recovery(state: GatewayState) -> None:
    """Recover silent jobs periodically; with several gateways, one of them does it each period."""
    interval_s = max(1.0, min(MAX_INTERVAL_S, state.settings.effective_visibility_timeout_s / 3))
    while True:
        try:
            if await state.redis.set(LOCK_KEY, "1", nx=True, ex=max(1, int(interval_s))):
                await recover_silent_jobs(state)
        except Exception:  # Redis down, broker refusing: recovery waits for the next period, the gateway serves on
            log.exception("job recovery failed; trying again in %.0f s", interval_s)
        await asyncio.sleep(interval_s)
