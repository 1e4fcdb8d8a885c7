"""The metadata file of an index request: JSON Lines, one object per image, matched to it by "filename"."""

from __future__ import annotations

import json
from typing import Any

from services.common.json_limits import JsonLimitError, loads_checked


class MetadataError(ValueError):
    """A line is not a JSON object with a "filename" string, or its metadata is larger than the limit."""

    def __init__(self, line: int, reason: str, *, too_large: bool = False) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason
        self.too_large = too_large


def metadata_size(metadata: dict[str, Any]) -> int:
    """An image's metadata in bytes as it is stored (compact JSON, UTF-8): what MMRAG_MAX_METADATA_BYTES limits."""
    return len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())


def parse_metadata_lines(text: str, *, max_item_bytes: int | None = None) -> dict[str, dict[str, Any]]:
    """filename → the rest of its object; blank lines are skipped, a later line for a filename wins.

    Each line must be storable as it is (services/common/json_limits.py: bounded nesting, valid Unicode) and, with
    `max_item_bytes`, no larger than that without its filename.
    """
    by_filename: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = loads_checked(line)
        except JsonLimitError as error:
            raise MetadataError(number, str(error)) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise MetadataError(number, 'each line needs a "filename" string')
        filename = entry.pop("filename")
        if max_item_bytes is not None and (size := metadata_size(entry)) > max_item_bytes:
            raise MetadataError(
                number,
                f"the metadata of {filename[:80]!r} is {size:,} bytes; the limit is {max_item_bytes:,} per image "
                "(MMRAG_MAX_METADATA_BYTES)",
                too_large=True,
            )
        by_filename[filename] = entry
    return by_filename
