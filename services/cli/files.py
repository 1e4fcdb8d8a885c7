"""Finding images and their metadata on disk for `mmrag index`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


def collect_images(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """JSON Lines, one object per image with a 'filename' relative to the indexed folder."""
    entries: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise SystemExit(f'{path}:{number}: each line needs a "filename" string')
        entries[entry.pop("filename")] = entry
    return entries
