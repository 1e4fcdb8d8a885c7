"""Collections: listing, stored images page by page, and ingestion (index jobs split into chunks)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.collections import CollectionInfo, validate_collection_name
from services.common.errors import InvalidImage, InvalidRequest, NotFound, PayloadTooLarge
from services.common.images import inspect_image
from services.common.job_store import new_job_id, new_record
from services.common.jobs import DeleteParams, FailedItem, IndexItem, IndexParams, Job, JobKind
from services.common.media import IMAGE_ID_PATTERN, MEDIA_TYPES, MediaStore
from services.common.queues import TaskName
from services.common.settings import Settings
from services.gateway.api_contract import binary_content, problems
from services.gateway.auth import AUTH_RESPONSES, CollectionReadAccess, IndexAccess
from services.gateway.index_upload import read_metadata, refuse_duplicate_filenames, reserve_collection
from services.gateway.ownership import stamp_owner
from services.gateway.routes.searches import job_location
from services.gateway.state import StateDep
from services.gateway.url_index import URL_INDEX_BODY_DOC, index_urls

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=AUTH_RESPONSES)
log = logging.getLogger(__name__)
MAX_PAGE = 500
_BAD_NAME = "The collection name is not valid"
_NO_COLLECTION = "The collection does not exist"
_NO_IMAGE = "The collection or the image does not exist"

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "metadata": {
                            "type": "string",
                            "format": "binary",
                            "description": 'JSON Lines, one object per file, matched by "filename"',
                        },
                    },
                }
            },
            **URL_INDEX_BODY_DOC,
        },
    }
}


async def _known(state: StateDep, name: str) -> CollectionInfo:
    info = await state.collections.get(validate_collection_name(name))
    if info is None:
        raise NotFound(f"collection {name!r} does not exist")
    return info


@router.get("", response_model=list[CollectionInfo], summary="All collections")
async def list_collections(state: StateDep, principal: CollectionReadAccess) -> list[CollectionInfo]:
    return [info for info in await state.collections.all() if principal.may_use(info.name)]


@router.get(
    "/{name}",
    response_model=CollectionInfo,
    responses=problems({400: _BAD_NAME, 404: _NO_COLLECTION}),
    summary="One collection: count, dim, model, metric",
)
async def get_collection(name: str, state: StateDep, principal: CollectionReadAccess) -> CollectionInfo:
    principal.check_collection(name)
    return await _known(state, name)


class ImageListing(BaseModel):
    id: str
    image_url: str
    metadata: dict[str, Any]


class ImagePage(BaseModel):
    items: list[ImageListing]
    next: str | None = None


def _image_page(media: MediaStore, name: str, cursor: str | None, limit: int) -> ImagePage:
    # One more than asked tells whether another page follows without a second walk.
    found = media.page(name, cursor, limit + 1)
    items = [
        ImageListing(
            id=image.id, image_url=f"/v1/collections/{name}/images/{image.id}", metadata=media.metadata(name, image.id)
        )
        for image in found[:limit]
    ]
    return ImagePage(items=items, next=items[-1].id if len(found) > limit else None)


@router.delete(
    "/{name}",
    status_code=202,
    response_model=Job,
    responses=problems({400: _BAD_NAME, 404: "The collection does not exist"}),
    summary="Drop a collection: its index, stored images and registry entry (a job); index jobs on it fail",
)
async def delete_collection(name: str, response: Response, state: StateDep, principal: IndexAccess) -> Job:
    principal.check_collection(validate_collection_name(name))
    await _known(state, name)
    job_id = new_job_id()
    await state.admission.admit(principal, JobKind.DELETE, job_id)
    # image_id None: the whole collection. The image-delete task does both (collection_drop.py), on the same queue.
    record = new_record(job_id, JobKind.DELETE, DeleteParams(collection=name))
    await state.jobs.create(stamp_owner(record, principal))
    await state.send_or_fail(TaskName.DELETE_IMAGE, job_id)
    log.info("[job %s] deleting collection %r", job_id, name)
    response.headers["Location"] = job_location(job_id)
    return await state.jobs.get(job_id)


@router.get(
    "/{name}/images",
    response_model=ImagePage,
    responses=problems({400: "The collection name, `limit` (1–500) or `cursor` is not valid", 404: _NO_COLLECTION}),
    summary="A page of the collection's stored images in id order; pass `next` back as `cursor` for the next page",
)
async def list_images(
    name: str,
    state: StateDep,
    principal: CollectionReadAccess,
    limit: int = Query(default=50, ge=1, le=MAX_PAGE, description="images per page"),
    cursor: str | None = Query(default=None, description="the `next` of the previous page"),
) -> ImagePage:
    validate_collection_name(name)
    principal.check_collection(name)
    if cursor is not None and not IMAGE_ID_PATTERN.match(cursor):
        raise InvalidRequest("cursor must be the `next` value of a previous page (a 64-character image id)")
    page = await run_in_threadpool(_image_page, state.media, name, cursor, limit)
    if not page.items and cursor is None and await state.collections.get(name) is None:
        raise NotFound(f"collection {name!r} does not exist")
    return page


@router.get(
    "/{name}/images/{image_id}",
    response_class=FileResponse,
    responses={
        200: {"description": "The image, as it was indexed", "content": binary_content(*MEDIA_TYPES.values())},
        **problems({400: _BAD_NAME, 404: _NO_IMAGE}),
    },
    summary="A stored gallery image",
)
async def get_image(name: str, image_id: str, state: StateDep, principal: CollectionReadAccess) -> FileResponse:
    validate_collection_name(name)
    principal.check_collection(name)
    path = state.media.find(name, image_id) if IMAGE_ID_PATTERN.match(image_id) else None
    if path is None:
        raise NotFound(f"image {image_id[:80]} is not in collection {name!r}")
    media_type = MEDIA_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    # An image never changes under its id. Behind keys no shared cache may keep it, or it would serve one key's
    # images to another.
    visibility = "private" if state.settings.auth_required else "public"
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": f"{visibility}, max-age=31536000, immutable"}
    )


@router.delete(
    "/{name}/images/{image_id}",
    status_code=202,
    response_model=Job,
    responses=problems({400: _BAD_NAME, 404: _NO_IMAGE}),
    summary="Remove an image from the index and the media store (a short job)",
)
async def delete_image(name: str, image_id: str, response: Response, state: StateDep, principal: IndexAccess) -> Job:
    principal.check_collection(validate_collection_name(name))
    await _known(state, name)
    if not IMAGE_ID_PATTERN.match(image_id) or state.media.find(name, image_id) is None:
        raise NotFound(f"image {image_id[:80]} is not in collection {name!r}")
    job_id = new_job_id()
    await state.admission.admit(principal, JobKind.DELETE, job_id)
    record = new_record(job_id, JobKind.DELETE, DeleteParams(collection=name, image_id=image_id))
    await state.jobs.create(stamp_owner(record, principal))
    await state.send_or_fail(TaskName.DELETE_IMAGE, job_id)
    response.headers["Location"] = job_location(job_id)
    return await state.jobs.get(job_id)


def _store_upload(
    media: MediaStore,
    collection: str,
    filename: str,
    data: bytes,
    metadata: dict[str, Any],
    settings: Settings,
    added: list[str],
) -> IndexItem | FailedItem:
    if len(data) > settings.max_upload_bytes:
        return FailedItem(filename=filename, reason=f"larger than {settings.max_upload_mb:g} MB (MMRAG_MAX_UPLOAD_MB)")
    try:
        info = inspect_image(data, max_pixels=settings.max_image_pixels, what=f"file {filename!r}")
    except InvalidImage as error:
        return FailedItem(filename=filename, reason=error.detail)
    digest, is_new = media.store(collection, data, info.ext, metadata)
    if is_new:
        added.append(digest)
    return IndexItem(id=digest, filename=filename, ext=info.ext, metadata=metadata)


def _remove_images(media: MediaStore, collection: str, image_ids: list[str]) -> None:
    for image_id in image_ids:
        media.delete(collection, image_id)


def _chunks(items: list[IndexItem], size: int) -> list[list[IndexItem]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@router.post(
    "/{name}/images",
    status_code=202,
    response_model=Job,
    openapi_extra=_UPLOAD_DOC,
    responses=problems(
        {
            400: "Neither multipart/form-data nor JSON `items`, no `files` parts, a bad `metadata` line, a bad URL, "
            "or a bad collection name",
            409: "The collection would be new and MMRAG_MAX_COLLECTIONS collections exist (type `conflict`)",
            413: "More files or items than MMRAG_MAX_INDEX_FILES, a part larger than 16 MB, or metadata past "
            "MMRAG_MAX_METADATA_BYTES / MMRAG_MAX_METADATA_MB",
            503: "Too many index jobs are unfinished, or Redis or the job queue is unavailable (with `Retry-After`)",
        }
    ),
    summary="Index images into a collection (created on first use), uploaded or fetched from URLs; returns an index "
    "job with progress",
)
async def index_images(name: str, request: Request, response: Response, state: StateDep, principal: IndexAccess) -> Job:
    settings = state.settings
    principal.check_collection(validate_collection_name(name))
    await state.admission.admit(principal, JobKind.INDEX, None)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return await index_urls(name, request, response, state, principal)
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest(
            "send multipart/form-data with one or more 'files' parts (and optional 'metadata'), "
            'or JSON {"items": [{"url": "https://…", "metadata": {…}}]}'
        )
    too_many = PayloadTooLarge(f"at most {settings.max_index_files:,} files per request (MMRAG_MAX_INDEX_FILES)")
    try:
        # One part more than the limit for the metadata file.
        form = await request.form(max_files=settings.max_index_files + 1, max_fields=4, max_part_size=16 * 1024 * 1024)
    except StarletteHTTPException as refused:
        # Starlette stops reading past max_files with a 400: for the client that is this limit's 413.
        if refused.status_code == 400 and "Too many files" in str(refused.detail):
            raise too_many from None
        raise
    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not uploads:
        raise InvalidRequest("no 'files' parts: attach the images to index as 'files'")
    if len(uploads) > settings.max_index_files:
        raise too_many
    # Everything that can refuse the request is checked before a file is written (index_upload.py).
    refuse_duplicate_filenames(upload.filename or "(unnamed)" for upload in uploads)
    metadata = await read_metadata(form.get("metadata"), settings)
    await reserve_collection(state.collections, name, settings)

    items: list[IndexItem] = []
    failed: list[FailedItem] = []
    added: list[str] = []  # images this request wrote: removed again if it fails before its job is queued
    try:
        for upload in uploads:
            filename = upload.filename or "(unnamed)"
            data = await upload.read(settings.max_upload_bytes + 1)
            meta = metadata.get(filename, {})
            stored = await run_in_threadpool(_store_upload, state.media, name, filename, data, meta, settings, added)
            if isinstance(stored, FailedItem):
                failed.append(stored)
            else:
                items.append(stored)

        job_id = new_job_id()
        await state.admission.admit(principal, JobKind.INDEX, job_id)
        chunks = _chunks(items, settings.index_batch_size)
        record = new_record(
            job_id,
            JobKind.INDEX,
            IndexParams(collection=name, chunks=len(chunks)),
            total=len(uploads),
            chunks=len(chunks),
        )
        await state.jobs.create(
            stamp_owner(record, principal), [[item.model_dump(mode="json") for item in chunk] for chunk in chunks]
        )
        await state.jobs.record_failures(job_id, failed)
        for number in range(len(chunks)):
            await state.send_or_fail(TaskName.INDEX, job_id, number)
    except BaseException:
        # Nothing refers to them yet (or only this request's job, failed by now): no orphan stays in the gallery. An
        # image that another request uploaded meanwhile was not written by this one and is not in `added`.
        await run_in_threadpool(_remove_images, state.media, name, added)
        raise
    if not chunks:
        await state.collections.release(name)
        error = InvalidImage(f"none of the {len(uploads)} files could be indexed: see progress.failed for why")
        await state.jobs.fail(job_id, error.to_problem())
    log.info(
        "[job %s] indexing %d files into %r in %d chunks (%d rejected)",
        job_id,
        len(items),
        name,
        len(chunks),
        len(failed),
    )
    response.headers["Location"] = job_location(job_id)
    return await state.jobs.get(job_id)
