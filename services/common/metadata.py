"""The metadata file of an index request: JSON Lines, one object per image, matched to it by "filename"."""

from __future__ import annotations

import json
from typing import Any


class MetadataError(ValueError):
    """A line is not a JSON object with a "filename" string."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def parse_metadata_lines(text: str) -> dict[str, dict[str, Any]]:
    """filename → the rest of its object; blank lines are skipped, a later line for a filename wins."""
    by_filename: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetadataError(number, f"not JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise MetadataError(number, 'each line needs a "filename" string')
        by_filename[entry.pop("filename")] = entry
    return by_filename
