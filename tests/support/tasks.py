"""Tasks seen from outside the workers: the messages waiting in the broker, and what the workers log about them.

Celery logs `Task <name>[<id>] received` when a worker takes a message and `... succeeded in` / `... raised` when it
ends. With prefetch 1 and one pool process, a task received and not yet ended is the one running now.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import cast

import redis

from services.common.queues import TASK_QUEUES

_EVENT = re.compile(r"Task (?P<task>[\w.]+)\[(?P<id>[0-9a-f-]{36})\] (?P<event>received|succeeded|raised)")


def task_queues() -> set[str]:
    """The broker lists that hold task messages, one per queue the product declares."""
    return {queue.value for queue in TASK_QUEUES.values()}


def _args(message: bytes) -> list[object]:
    """A task message's positional arguments (Celery's protocol 2: the body is base64 of [args, kwargs, embed])."""
    args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(message)["body"]))
    return list(args)


def messages_for(client: redis.Redis, job_ids: Iterable[str]) -> dict[str, list[bytes]]:
    """The messages waiting in each task queue whose first argument is one of `job_ids`."""
    wanted = set(job_ids)
    found: dict[str, list[bytes]] = {}
    for queue in task_queues():
        for message in cast(list[bytes], client.lrange(queue, 0, -1)):
            args = _args(message)
            if args and args[0] in wanted:
                found.setdefault(queue, []).append(message)
    return found


def task_ids(log: str, task: str, event: str) -> list[str]:
    """Ids of the `task` tasks that reached `event` (received, succeeded, raised) in a worker log, in order."""
    return [m["id"] for m in _EVENT.finditer(log) if m["task"] == task and m["event"] == event]


def unfinished(log: str, task: str) -> list[str]:
    """Ids of the `task` tasks this worker received and has not ended (a crash leaves them so)."""
    ended = set(task_ids(log, task, "succeeded")) | set(task_ids(log, task, "raised"))
    return [task_id for task_id in task_ids(log, task, "received") if task_id not in ended]
