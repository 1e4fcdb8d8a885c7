"""Dropping a whole collection (DELETE /v1/collections/{name}): its index jobs, registry entry, vectors and files.

Order matters:
1. Index jobs still running on the collection fail, saying why; their chunks still queued then find the job ended
   and stop, and a chunk being embedded right now checks again before it writes (ingest.run_index_chunk).
2. The registry entry goes: from then on the gateway answers 404 for the collection, and a search already queued
   fails in the worker with not-found.
3. The Milvus collection, then the media files.
Every step is idempotent, so a redelivered drop simply finds less to do.

With one embedder (Milvus Lite) tasks run one at a time, so a drop always falls between two chunks. With several
embedders on a Milvus server, a chunk that passed its last check just before the drop may still write: into the
dropped collection (its write fails, and its job is failed already) or, if another embedder re-creates the name at
that moment, into the new one.
"""

from __future__ import annotations

import logging

from services.common.errors import NotFound
from services.common.job_runner import fail_job
from services.common.jobs import CollectionDropResult, DeleteParams, IndexParams, JobKind, JobStage, JobStatus
from services.common.logs import job_logger
from services.embedder.resources import Resources

logger = logging.getLogger(__name__)


def _index_jobs_on(resources: Resources, collection: str) -> list[str]:
    records = resources.jobs.raw_many(resources.jobs.active_job_ids())
    return [
        job_id
        for job_id, record in records.items()
        if record.get("kind") == JobKind.INDEX.value
        and IndexParams.model_validate_json(record["params"]).collection == collection
    ]


def drop_collection(resources: Resources, job_id: str, params: DeleteParams) -> None:
    log = job_logger(logger, job_id)
    name = params.collection
    stopped = _index_jobs_on(resources, name)
    for index_job in stopped:
        error = NotFound(
            f"collection {name!r} was deleted (job {job_id}) while this index job ran: index the images again "
            "to have them in a new collection of that name"
        )
        fail_job(resources.jobs, index_job, error)
        log.info("failed index job %s: its collection %r is being deleted", index_job, name)
    registered = resources.collections.get(name) is not None
    resources.collections.remove(name)
    had_vectors = resources.index.drop(name)
    had_files = resources.media.drop_collection(name)
    removed = registered or had_vectors or had_files
    result = CollectionDropResult(collection=name, removed=removed, failed_index_jobs=stopped)
    resources.jobs.update(
        job_id,
        fields={"status": JobStatus.SUCCEEDED.value, "stage": JobStage.DONE.value, "result": result},
    )
    log.info("dropped collection %r (%d index jobs stopped)", name, len(stopped))
