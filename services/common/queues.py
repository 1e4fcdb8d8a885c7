"""Queue and task names: the only coupling between the gateway and the workers (tasks are sent by name)."""

from enum import StrEnum


class Queue(StrEnum):
    EMBED = "embed"
    RERANK = "rerank"


class TaskName(StrEnum):
    SEARCH = "mmrag.embedder.search"
    INDEX = "mmrag.embedder.index"
    DELETE_IMAGE = "mmrag.embedder.delete_image"
    RERANK = "mmrag.reranker.rerank"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.SEARCH: Queue.EMBED,
    TaskName.INDEX: Queue.EMBED,
    TaskName.DELETE_IMAGE: Queue.EMBED,
    TaskName.RERANK: Queue.RERANK,
}
