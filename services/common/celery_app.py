"""The Celery application every service shares: broker, serialisation and the reliability settings.

These settings live here and nowhere else, so the local stack, docker-compose and Kubernetes run workers
that behave the same: compose and k8s only run `mmrag worker <name>`.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue as KombuQueue

from services.common.queues import TASK_QUEUES, Queue
from services.common.settings import Settings


def create_celery(settings: Settings) -> Celery:
    app = Celery("mmrag", broker=settings.redis_url)
    app.conf.update(
        # JSON only: nothing executable travels through the broker, and images never do (tasks carry ids).
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # The job record in Redis is the truth about a job; Celery results would only duplicate it.
        task_ignore_result=True,
        result_backend=None,
        # Declared, not created on demand: a typo in a queue name fails at start-up instead of filling a
        # queue nobody consumes.
        task_queues=[KombuQueue(queue.value, routing_key=queue.value) for queue in Queue],  # type: ignore[no-untyped-call]
        task_routes={name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()},
        task_default_queue=Queue.SEARCH.value,
        task_create_missing_queues=False,
        # At-least-once delivery: a task is acknowledged after it ran, so a killed worker loses nothing;
        # tasks are idempotent against the job record.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A pool process that replaces one that died (hard time limit, out of memory) loads the model before it
        # reports up; Celery's default of 4 s would kill it mid-load, again and again, and leave no process.
        # MMRAG_WORKER_START_TIMEOUT_S: the real load time, a first download of the weights included.
        worker_proc_alive_timeout=settings.worker_start_timeout_s,
        # Unacknowledged tasks come back after this long: longer than any task may run.
        broker_transport_options={
            "visibility_timeout": settings.effective_visibility_timeout_s,
            # Sweep for tasks whose worker died often enough that recovery waits on the visibility
            # timeout, not on kombu's default sweep period (100 s).
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            # A worker polls its queues in the order it was given them, every time: an embedder takes a waiting
            # search before the next index chunk (round robin, kombu's default, would alternate).
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        # A "sent" event per published task: the celery-exporter in the monitoring profile turns it into queue wait.
        task_send_sent_event=True,
        # A task keeps running through a broker blip (a Redis restart): its own writes are retried
        # (redis_clients.py), and if its late ack is lost with the old connection, the redelivered message finds
        # the work done. Cancelling it instead would throw away a finished VLM answer or a chunk's vectors.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # SIGTERM (compose stop, a k8s rollout): finish the running task for up to this long, then hand back
        # what is left at once instead of leaving it to the visibility timeout.
        worker_soft_shutdown_timeout=10.0,
        worker_enable_soft_shutdown_on_idle=True,
    )
    return app
