"""Checks on an index upload that must pass before any of its files is written.

Each bounds what one request can make the gateway and Redis hold. Before them, 1,000 file parts all named `a.png`
with one 1 MB metadata line (a 1.25 MB request) had that line copied to every file: the gateway peaked at 2.15 GB,
Redis at 2.48 GB, and the gateway stopped serving for 11 s (issue 17).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import UploadFile

from services.common.collections import AsyncCollectionRegistry
from services.common.errors import Conflict, InvalidRequest, PayloadTooLarge
from services.common.metadata import MetadataError, parse_metadata_lines
from services.common.settings import Settings

# Names listed in the answer when several repeat: enough to find the mistake, never a huge problem body.
NAMED_DUPLICATES = 5


def refuse_duplicate_filenames(filenames: Iterable[str]) -> None:
    """Metadata is matched to files by name: each file part needs its own (400 naming those that repeat)."""
    counts = Counter(filenames)
    repeated = [(name, count) for name, count in counts.items() if count > 1]
    if not repeated:
        return
    named = ", ".join(f"{name[:80]!r} ({count:,} times)" for name, count in repeated[:NAMED_DUPLICATES])
    more = f" and {len(repeated) - NAMED_DUPLICATES:,} more" if len(repeated) > NAMED_DUPLICATES else ""
    raise InvalidRequest(
        f"each file needs its own filename, since metadata is matched by it; repeated: {named}{more}",
        extra={"duplicates": [name[:200] for name, _ in repeated[:NAMED_DUPLICATES]]},
    )


async def read_metadata(part: UploadFile | str | None, settings: Settings) -> dict[str, dict[str, Any]]:
    """The metadata part (JSON Lines) by filename, within MMRAG_MAX_METADATA_MB in all and MMRAG_MAX_METADATA_BYTES
    per image (413), each line a storable JSON object (400 naming the line)."""
    if part is None:
        return {}
    limit = settings.max_metadata_total_bytes
    raw = await part.read(limit + 1) if isinstance(part, UploadFile) else part.encode()
    if len(raw) > limit:
        raise PayloadTooLarge(
            f"the metadata part is larger than {settings.max_metadata_mb:g} MB (MMRAG_MAX_METADATA_MB): "
            "send the images and their metadata in several requests"
        )
    try:
        return parse_metadata_lines(raw.decode("utf-8", errors="replace"), max_item_bytes=settings.max_metadata_bytes)
    except MetadataError as error:
        problem = PayloadTooLarge if error.too_large else InvalidRequest
        raise problem(f"metadata line {error.line}: {error.reason}") from None


async def reserve_collection(registry: AsyncCollectionRegistry, name: str, settings: Settings) -> None:
    """Let an upload create `name` only while collections number fewer than MMRAG_MAX_COLLECTIONS (409 past it)."""
    if not await registry.reserve(name, max_collections=settings.max_collections, ttl_s=settings.job_ttl_s):
        raise Conflict(
            f"collection {name!r} would be one too many: there are already {settings.max_collections:,} collections "
            "(MMRAG_MAX_COLLECTIONS): index into an existing collection, or have the limit raised"
        )
