"""Queue and task names: the only coupling between the gateway and the workers (tasks are sent by name).

Interactive embedder work (searches, deletes of images and collections) and bulk index chunks travel on separate
queues, so a search never waits behind a catalogue being indexed. An embedder consumes both by default and always
looks at the search queue first (`queue_order_strategy: priority` in celery_app.py); `mmrag worker embedder --only
search` keeps a worker, and its GPU, for interactive traffic.
"""

from enum import StrEnum


class Queue(StrEnum):
    SEARCH = "embed-search"
    INDEX = "embed-index"
    RERANK = "rerank"


class TaskName(StrEnum):
    SEARCH = "mmrag.embedder.search"
    INDEX = "mmrag.embedder.index"
    # Also drops whole collections (DeleteParams.image_id None); the name stays, for messages already queued.
    DELETE_IMAGE = "mmrag.embedder.delete_image"
    RERANK = "mmrag.reranker.rerank"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.SEARCH: Queue.SEARCH,
    TaskName.DELETE_IMAGE: Queue.SEARCH,
    TaskName.INDEX: Queue.INDEX,
    TaskName.RERANK: Queue.RERANK,
}

# What each kind of worker consumes, in the order it looks at them: the first non-empty queue wins.
EMBEDDER_QUEUES: tuple[Queue, ...] = (Queue.SEARCH, Queue.INDEX)
RERANKER_QUEUES: tuple[Queue, ...] = (Queue.RERANK,)
