"""Finding images and their metadata on disk for `mmrag index`: a folder, one file, or a .tar.gz; or a file of URLs."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.metadata import MetadataError, parse_metadata_lines

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


@dataclass(frozen=True)
class ImageSource:
    name: str  # relative to the folder or archive root: what metadata's "filename" refers to
    read: Callable[[], bytes]


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not Path(name).name.startswith("._")


def _from_archive(path: Path) -> list[ImageSource]:
    # Open for the CLI's lifetime so members are read one batch at a time, in archive order (a gzip stream
    # cannot seek backwards cheaply), instead of holding the whole archive in memory.
    archive = tarfile.open(path, mode="r:*")  # noqa: SIM115

    def reader(member: tarfile.TarInfo) -> Callable[[], bytes]:
        def read() -> bytes:
            handle = archive.extractfile(member)
            return handle.read() if handle is not None else b""

        return read

    members = [m for m in archive.getmembers() if m.isfile() and _is_image(m.name)]
    return [ImageSource(name=m.name.removeprefix("./"), read=reader(m)) for m in members]


def collect_images(root: Path) -> list[ImageSource]:
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _from_archive(root)
    if root.is_file():
        return [ImageSource(name=root.name, read=root.read_bytes)]
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p.name))
    return [ImageSource(name=p.relative_to(root).as_posix(), read=p.read_bytes) for p in files]


def read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """JSON Lines, one object per image with a 'filename' relative to the indexed folder."""
    try:
        return parse_metadata_lines(path.read_text())
    except MetadataError as error:
        raise SystemExit(f"{path}:{error.line}: {error.reason}") from None


def read_url_items(path: Path) -> list[dict[str, Any]]:
    """JSON Lines, one {"url": ..., "metadata": {...}} object per image to fetch; blank lines are skipped."""
    items: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise SystemExit(f'{path}:{number}: each line needs a "url" string')
        if not isinstance(entry.get("metadata", {}), dict):
            raise SystemExit(f'{path}:{number}: "metadata" must be a JSON object')
        items.append({"url": entry["url"], "metadata": entry.get("metadata", {})})
    return items
