"""The media store: gallery images on disk, addressed by the sha256 of their bytes.

Layout: `<data_dir>/media/<collection>/<id[:2]>/<id>.<ext>`, and beside an image uploaded with metadata its
sidecar `<id>-metadata.json` (so the gallery can be listed without the vector index). Writing the same bytes twice
is a no-op, and a write is atomic (temporary file, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# \Z, not $: `$` also matches before a trailing newline.
IMAGE_ID_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
_IMAGE_FILE = re.compile(r"([0-9a-f]{64})\.([a-z]+)\Z")
_PREFIX_FOLDER = re.compile(r"[0-9a-f]{2}\Z")
_METADATA_SUFFIX = "-metadata.json"
# Dropped collections wait here to be deleted (collection names start with a letter: no clash).
TRASH_DIR = "_trash"
MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
}


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, order=True)
class StoredImage:
    id: str
    ext: str


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, target)


class MediaStore:
    def __init__(self, root: Path) -> None:
        self._root = root

    def _folder(self, collection: str, image_id: str) -> Path:
        if not IMAGE_ID_PATTERN.fullmatch(image_id):
            raise ValueError(f"not an image id: {image_id!r}")
        return self._root / collection / image_id[:2]

    def path(self, collection: str, image_id: str, ext: str) -> Path:
        return self._folder(collection, image_id) / f"{image_id}.{ext}"

    def _metadata_path(self, collection: str, image_id: str) -> Path:
        return self._folder(collection, image_id) / f"{image_id}{_METADATA_SUFFIX}"

    def put(self, collection: str, data: bytes, ext: str, metadata: dict[str, Any] | None = None) -> str:
        """Store an image; its metadata is kept only when the image is new, as the index keeps the first one."""
        return self.store(collection, data, ext, metadata)[0]

    def store(self, collection: str, data: bytes, ext: str, metadata: dict[str, Any] | None = None) -> tuple[str, bool]:
        """`put`, also saying whether the image is new (written now) rather than stored before."""
        digest = image_id(data)
        target = self.path(collection, digest, ext)
        if target.exists():
            return digest, False
        # The sidecar first: a lister that sees the image must find its metadata.
        if metadata:
            _write_atomically(self._metadata_path(collection, digest), json.dumps(metadata).encode())
        _write_atomically(target, data)
        return digest, True

    def metadata(self, collection: str, image_id: str) -> dict[str, Any]:
        """The metadata stored with an image at upload; {} when it had none."""
        try:
            loaded = json.loads(self._metadata_path(collection, image_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def page(self, collection: str, after: str | None, limit: int) -> list[StoredImage]:
        """Up to `limit` images with ids greater than `after`, in id order.

        Ordering by id makes a cursor (the last id seen) stable: an image present for the whole walk is listed
        exactly once however many are added or removed meanwhile. Only the prefix folders from the cursor's on
        are read.
        """
        root = self._root / collection
        if not root.is_dir():
            return []
        start = after[:2] if after else ""
        found: list[StoredImage] = []
        for prefix in sorted(p.name for p in root.iterdir() if _PREFIX_FOLDER.match(p.name) and p.name >= start):
            try:
                names = os.listdir(root / prefix)
            except FileNotFoundError:
                continue
            matches = (_IMAGE_FILE.match(name) for name in names)
            images = sorted(StoredImage(m[1], m[2]) for m in matches if m and m[2] in MEDIA_TYPES)
            found.extend(image for image in images if after is None or image.id > after)
            if len(found) >= limit:
                break
        return found[:limit]

    def find(self, collection: str, image_id: str) -> Path | None:
        folder = self._folder(collection, image_id)
        if not folder.is_dir():
            return None
        for candidate in folder.glob(f"{image_id}.*"):
            return candidate
        return None

    def read(self, collection: str, image_id: str) -> bytes | None:
        path = self.find(collection, image_id)
        return path.read_bytes() if path is not None else None

    def delete(self, collection: str, image_id: str) -> bool:
        self._metadata_path(collection, image_id).unlink(missing_ok=True)
        path = self.find(collection, image_id)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        return True

    def drop_collection(self, collection: str) -> bool:
        """Remove a collection's images; False if it had none.

        The folder is first renamed into the trash (one atomic step: from then on the collection is gone, and an
        upload under the same name starts a new folder), then deleted. A delete cut short, by a time limit say,
        leaves only trash, which the next drop empties."""
        folder = self._root / collection
        trash = self._root / TRASH_DIR
        trash.mkdir(parents=True, exist_ok=True)
        try:
            folder.rename(trash / f"{collection}-{secrets.token_hex(8)}")
        except FileNotFoundError:
            existed = False
        else:
            existed = True
        for leftover in trash.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        return existed
