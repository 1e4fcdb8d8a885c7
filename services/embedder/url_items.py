"""The items of an index chunk from URLs → images in the media store, as if they had been uploaded.

Each URL is fetched (fetch.py: SSRF-safe, size- and time-limited, retried), its bytes are checked for what they
are (the Content-Type header is not trusted), and the image is stored with its metadata under the sha256 of its
bytes; from there the chunk is indexed exactly like an uploaded one (dedupe included). A URL that cannot be used
becomes a FailedItem naming it and the reason.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from urllib.parse import unquote, urlsplit

from services.common.errors import InvalidImage
from services.common.images import inspect_image
from services.common.jobs import FailedItem, IndexItem, UrlItem
from services.common.logs import job_logger
from services.common.media import MediaStore
from services.common.settings import Settings
from services.embedder.fetch import FetchError, ImageFetcher

logger = logging.getLogger(__name__)

# The share of a chunk's time limit (MMRAG_INDEX_TIME_LIMIT_S) its fetching may take; the rest is for decoding,
# the forward passes and Milvus. No fetch attempt starts past it.
FETCH_SHARE_OF_TIME_LIMIT = 0.5


@cache
def _fetcher(settings: Settings) -> ImageFetcher:
    # One per worker process, made on first use (after the fork): its connection pool is shared by the threads.
    return ImageFetcher(settings)


@cache
def _fetch_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")


def display_name(url: str) -> str:
    """A short name for an image fetched from `url`: the last part of its path, else its host."""
    parts = urlsplit(url)
    return unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.hostname or url


def fetch_deadline(settings: Settings, started: float) -> float:
    return started + settings.index_time_limit_s * FETCH_SHARE_OF_TIME_LIMIT


def _fetch_one(
    fetcher: ImageFetcher, media: MediaStore, settings: Settings, collection: str, item: UrlItem, deadline: float
) -> IndexItem | FailedItem:
    try:
        data = fetcher.fetch(item.url, deadline)
        info = inspect_image(data, max_pixels=settings.max_image_pixels, what="content at the URL")
    except (FetchError, InvalidImage) as error:
        reason = error.reason if isinstance(error, FetchError) else error.detail
        return FailedItem(url=item.url, reason=reason)
    digest = media.put(collection, data, info.ext, item.metadata)
    return IndexItem(id=digest, filename=display_name(item.url), ext=info.ext, metadata=item.metadata, url=item.url)


def fetch_items(
    settings: Settings, media: MediaStore, job_id: str, collection: str, items: list[UrlItem], deadline: float
) -> tuple[list[IndexItem], list[FailedItem]]:
    """Fetch and store `items`, MMRAG_FETCH_CONCURRENCY at a time: the stored images, and the URLs that failed."""
    started = time.perf_counter()
    fetcher = _fetcher(settings)
    outcomes = list(
        _fetch_pool(settings.fetch_concurrency).map(
            lambda item: _fetch_one(fetcher, media, settings, collection, item, deadline), items
        )
    )
    stored = [outcome for outcome in outcomes if isinstance(outcome, IndexItem)]
    failed = [outcome for outcome in outcomes if isinstance(outcome, FailedItem)]
    log = job_logger(logger, job_id)
    for failure in failed:
        log.info("not fetched: %s: %s", failure.url, failure.reason)
    log.info("fetched %d of %d URLs in %.0f ms", len(stored), len(items), (time.perf_counter() - started) * 1000)
    return stored, failed
