"""Short-lived binary objects (uploaded query images, panoramas), expiring with their job.

They live as files under the media store (`<media>/_blobs/`), never in the broker Redis: that Redis runs with
`noeviction`, so a few thousand 10 MB query images would fill it and then refuse every write, queued tasks and
heartbeats included. The media store is the volume every service already shares (compose, Kubernetes, `mmrag up`);
collection names start with a letter, so `_blobs` cannot clash with one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

from services.common.jobs import SearchParams
from services.common.media import MediaStore
from services.common.settings import Settings

BLOB_DIR = "_blobs"
# `<kind>:<job id>`: the kind names a folder, the job id (server-generated hex) a file in it.
_BLOB_ID = re.compile(r"(query|panorama):([A-Za-z0-9_-]{1,128})\Z")
# Expired files are looked for at most this often per process, on a write.
SWEEP_INTERVAL_S = 60.0


def query_blob_id(job_id: str) -> str:
    return f"query:{job_id}"


def panorama_blob_id(job_id: str) -> str:
    return f"panorama:{job_id}"


def blob_root(settings: Settings) -> Path:
    return settings.media_dir / BLOB_DIR


class BlobStore:
    """Files under `root`, each readable for `ttl_s` after it was written, then deleted."""

    def __init__(self, root: Path, ttl_s: int) -> None:
        self._root = root
        self._ttl_s = ttl_s
        self._next_sweep = 0.0

    def _path(self, blob_id: str) -> Path:
        match = _BLOB_ID.fullmatch(blob_id)
        if match is None:
            raise ValueError(f"not a blob id: {blob_id!r}")
        return self._root / match.group(1) / match.group(2)

    def put(self, blob_id: str, data: bytes) -> None:
        target = self._path(blob_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)  # readers see the whole blob or none
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
            self.sweep()

    def get(self, blob_id: str) -> bytes | None:
        path = self._path(blob_id)
        try:
            if time.time() - path.stat().st_mtime > self._ttl_s:
                path.unlink(missing_ok=True)
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, blob_id: str) -> None:
        self._path(blob_id).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Delete every blob (and stale temporary file) older than the TTL; returns how many."""
        cutoff = time.time() - self._ttl_s
        removed = 0
        for folder in (self._root / "query", self._root / "panorama"):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed


class AsyncBlobStore:
    """BlobStore for the gateway's event loop: file work in a thread (a query image is up to the upload limit)."""

    def __init__(self, root: Path, ttl_s: int) -> None:
        self._store = BlobStore(root, ttl_s)

    async def put(self, blob_id: str, data: bytes) -> None:
        await asyncio.to_thread(self._store.put, blob_id, data)

    async def get(self, blob_id: str) -> bytes | None:
        return await asyncio.to_thread(self._store.get, blob_id)

    async def delete(self, blob_id: str) -> None:
        await asyncio.to_thread(self._store.delete, blob_id)


def read_query_image(params: SearchParams, blobs: BlobStore, media: MediaStore) -> bytes | None:
    """A search's query image: the uploaded blob, or the indexed image it names; None once it is gone, and for a
    text-only search (which has none: `params.query.text_only`)."""
    if params.query.blob_id is not None:
        return blobs.get(params.query.blob_id)
    if params.query.image_id is None:
        return None
    return media.read(params.collection, params.query.image_id)
