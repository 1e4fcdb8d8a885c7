"""The indexing stage: one chunk of an index job → vectors in Milvus, counted exactly once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from PIL import Image

from services.common.collections import CollectionInfo
from services.common.cpus import usable_cpus
from services.common.errors import InvalidImage, InvalidRequest
from services.common.images import decode_for_model, reduced_min_side
from services.common.job_runner import JobGone, fail_job, guard_attempts
from services.common.job_store import UpdateResult, decode_job, total_ms
from services.common.jobs import (
    DeleteParams,
    DeleteResult,
    FailedItem,
    IndexItem,
    IndexParams,
    IndexResult,
    JobStage,
    JobStatus,
    UrlItem,
)
from services.common.logs import job_logger
from services.common.settings import Settings
from services.embedder.collection_drop import drop_collection
from services.embedder.collections import generation, open_for_indexing, refresh_count
from services.embedder.resources import Resources
from services.embedder.url_items import fetch_deadline, fetch_items

logger = logging.getLogger(__name__)


@cache
def _decode_pool(threads: int) -> ThreadPoolExecutor:
    # Created on first use, in the worker process itself (never before a fork). Pillow releases the GIL while it
    # decodes and reduces (bench/decode.py measures the speed-up of threads over one), so threads suffice.
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")


def decode_threads(settings: Settings) -> int:
    return settings.decode_threads or usable_cpus()


def decode_pool(settings: Settings) -> ThreadPoolExecutor:
    """The process's one decode pool, shared by index chunks and by the query images of search batches (a batch
    served between an index chunk's passes runs when the chunk's own decoding is over)."""
    return _decode_pool(decode_threads(settings))


def _first_of_each_new(items: list[IndexItem], existing: Collection[str]) -> list[IndexItem]:
    """The items whose image is not indexed yet, each image once: the same bytes twice in a chunk (two URLs that
    serve one image, a file sent twice) are indexed once, the other copies counted as duplicates."""
    seen = set(existing)
    fresh = []
    for item in items:
        if item.id not in seen:
            seen.add(item.id)
            fresh.append(item)
    return fresh


def _decode(resources: Resources, collection: str, item: IndexItem, min_side: int) -> Image.Image | FailedItem:
    data = resources.media.read(collection, item.id)
    if data is None:
        return FailedItem(
            filename=item.filename, url=item.url, id=item.id, reason="the stored file disappeared before it was indexed"
        )
    try:
        return decode_stored(data, resources.settings, min_side=min_side, what=f"file {item.filename!r}")
    except InvalidImage as error:
        return FailedItem(filename=item.filename, url=item.url, id=item.id, reason=error.detail)


def decode_stored(data: bytes, settings: Settings, *, min_side: int, what: str) -> Image.Image:
    """A stored file's pixels for the model. Reduced (unless MMRAG_DECODE_REDUCED=false), so a chunk holds no
    full-size pixels: at most one image per decode thread while it is being reduced."""
    return decode_for_model(
        data, max_pixels=settings.max_image_pixels, min_side=min_side, what=what, reduced=settings.decode_reduced
    )


def run_index_chunk(
    resources: Resources, job_id: str, chunk: int, between_batches: Callable[[], object] | None = None
) -> None:
    """Index one chunk; `between_batches` runs after decoding and after each forward pass (the worker serves
    waiting searches there)."""
    log = job_logger(logger, job_id)
    record = resources.jobs.raw(job_id)
    if JobStatus(record["status"]).is_terminal:
        raise JobGone(f"job is already {record['status']}")
    params = IndexParams.model_validate_json(record["params"])
    if resources.jobs.chunk_done(job_id, chunk):
        # Delivered again (redelivered, or sent again by recovery). If every chunk is in but the job never
        # ended, its worker died right after the last one: end it now.
        if len(resources.jobs.finished_chunks(job_id)) >= params.chunks:
            finish_index_job(resources, job_id, params, open_for_indexing(resources, params.collection))
        raise JobGone(f"chunk {chunk} is already indexed")
    guard_attempts(resources.jobs, job_id, f"indexing chunk {chunk}")
    raw_items = resources.jobs.chunk_items(job_id, chunk)
    changed = resources.jobs.update(
        job_id, fields={"status": JobStatus.RUNNING.value, "stage": JobStage.INDEXING.value}
    )
    if changed is not UpdateResult.APPLIED:
        raise JobGone("job was canceled or finished elsewhere")

    started = time.perf_counter()
    info = open_for_indexing(resources, params.collection)
    model = resources.require_model()
    if params.source == "url":
        # Fetched here, by the worker, never by the gateway; from then on indexed like uploaded images.
        urls = [UrlItem.model_validate(raw) for raw in raw_items]
        deadline = fetch_deadline(resources.settings, time.monotonic())
        items, failed = fetch_items(resources.settings, resources.media, job_id, params.collection, urls, deadline)
    else:
        items, failed = [IndexItem.model_validate(raw) for raw in raw_items], []
    existing = resources.index.existing_ids(params.collection, [item.id for item in items])
    fresh = _first_of_each_new(items, existing)
    min_side = reduced_min_side(model.image_size)
    pool = decode_pool(resources.settings)
    outcomes = list(pool.map(lambda item: _decode(resources, params.collection, item, min_side), fresh))
    failed += [outcome for outcome in outcomes if isinstance(outcome, FailedItem)]
    decoded = [(item, image) for item, image in zip(fresh, outcomes, strict=True) if isinstance(image, Image.Image)]
    if between_batches is not None:
        between_batches()  # decoding a chunk can take as long as a forward pass
    if decoded:
        vectors = model.encode(
            [image for _, image in decoded],
            [None] * len(decoded),
            batch_size=resources.settings.encode_batch_size,
            after_batch=between_batches,
        )
        if resources.jobs.status(job_id).is_terminal:
            # Canceled, or its collection deleted, while the chunk was embedded: nothing may be written now.
            raise JobGone("the job ended while this chunk was embedded (canceled, or its collection deleted)")
        resources.index.upsert(
            params.collection,
            [item.id for item, _ in decoded],
            vectors,
            [item.ext for item, _ in decoded],
            [item.metadata for item, _ in decoded],
        )
    duplicates = len(items) - len(fresh)
    log.info(
        "chunk %d: %d indexed, %d already there, %d failed in %.0f ms",
        chunk,
        len(decoded),
        duplicates,
        len(failed),
        (time.perf_counter() - started) * 1000,
    )
    outcome = resources.jobs.complete_chunk(
        job_id,
        chunk,
        increments={
            "progress_done": len(raw_items),
            "count.indexed": len(decoded),
            "count.duplicates": duplicates,
            # Work time of the job's chunks, whichever embedders ran them: its `index` stage (job_metrics.py).
            "work_ms.index": round((time.perf_counter() - started) * 1000),
        },
        failed=failed,
    )
    if outcome is UpdateResult.LAST_CHUNK:
        finish_index_job(resources, job_id, params, info)


def run_delete(resources: Resources, job_id: str) -> None:
    record = resources.jobs.raw(job_id)
    if JobStatus(record["status"]).is_terminal:
        raise JobGone(f"job is already {record['status']}")
    params = DeleteParams.model_validate_json(record["params"])
    resources.jobs.update(job_id, fields={"status": JobStatus.RUNNING.value, "stage": JobStage.DELETING.value})
    if params.image_id is None:
        drop_collection(resources, job_id, params)
        return
    info = resources.collections.get(params.collection)
    removed = False
    if info is not None and resources.index.has(params.collection):
        resources.index.ensure_collection(params.collection, info.dim, generation(info))
        removed = bool(resources.index.existing_ids(params.collection, [params.image_id]))
        # The vector first: a search must never return a candidate whose image is already gone.
        resources.index.delete(params.collection, [params.image_id])
        refresh_count(resources, info)
    removed = resources.media.delete(params.collection, params.image_id) or removed
    result = DeleteResult(collection=params.collection, image_id=params.image_id, removed=removed)
    resources.jobs.update(
        job_id,
        fields={"status": JobStatus.SUCCEEDED.value, "stage": JobStage.DONE.value, "result": result},
    )
    job_logger(logger, job_id).info("deleted %s from %r", params.image_id, params.collection)


def finish_index_job(resources: Resources, job_id: str, params: IndexParams, info: CollectionInfo) -> None:
    # Milvus Lite indexes new rows only once they are flushed; until then searches scan them slowly.
    resources.index.flush(params.collection)
    # Counted once, here: every chunk's rows are in by now, whichever embedder wrote them.
    refresh_count(resources, info)
    resources.jobs.forget_chunk_items(job_id)
    record = resources.jobs.raw(job_id)
    failed = len(decode_job(record).progress.failed)
    result = IndexResult(
        collection=params.collection,
        model=info.model,
        warning=resources.warning,
        indexed=int(record.get("count.indexed", 0)),
        duplicates=int(record.get("count.duplicates", 0)),
        failed=failed,
    )
    if result.indexed + result.duplicates == 0 and failed > 0:
        # Nothing of the job could be used: it failed, as an upload whose every file the gateway refused does.
        what = "URLs" if params.source == "url" else "files"
        error_type = InvalidRequest if params.source == "url" else InvalidImage
        fail_job(
            resources.jobs,
            job_id,
            error_type(f"none of the {failed} {what} could be indexed: see progress.failed for the reason of each"),
        )
        job_logger(logger, job_id).info("index job failed: none of the %d %s could be indexed", failed, what)
        return
    resources.jobs.update(
        job_id,
        fields={
            "status": JobStatus.SUCCEEDED.value,
            "stage": JobStage.DONE.value,
            "result": result,
            "timing.total": f"{total_ms(record):.3f}",
        },
    )
    job_logger(logger, job_id).info(
        "index job done: %d indexed, %d duplicates, %d failed", result.indexed, result.duplicates, failed
    )
