"""The media store: gallery images on disk, addressed by the sha256 of their bytes.

Layout: `<data_dir>/media/<collection>/<id[:2]>/<id>.<ext>`. Writing the same bytes twice is a no-op, and a
write is atomic (temporary file, then rename), so a reader never sees half an image.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

IMAGE_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
}


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MediaStore:
    def __init__(self, root: Path) -> None:
        self._root = root

    def _folder(self, collection: str, image_id: str) -> Path:
        if not IMAGE_ID_PATTERN.match(image_id):
            raise ValueError(f"not an image id: {image_id!r}")
        return self._root / collection / image_id[:2]

    def path(self, collection: str, image_id: str, ext: str) -> Path:
        return self._folder(collection, image_id) / f"{image_id}.{ext}"

    def put(self, collection: str, data: bytes, ext: str) -> str:
        digest = image_id(data)
        target = self.path(collection, digest, ext)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        return digest

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
        path = self.find(collection, image_id)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        return True

    def drop_collection(self, collection: str) -> None:
        shutil.rmtree(self._root / collection, ignore_errors=True)
