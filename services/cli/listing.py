"""`mmrag ls` and `mmrag collections`: a collection's images page by page, the collections, dropping one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli.client import GatewayClient

# The most the API gives per page: the fewest round trips for a whole walk.
PAGE_SIZE = 500


def walk_images(client: GatewayClient, collection: str, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
    """Every image of `collection` in id order, one page at a time (each image present throughout exactly once)."""
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": page_size} | ({"cursor": cursor} if cursor else {})
        page = client.request("GET", f"/v1/collections/{collection}/images", params=params).json()
        yield from page["items"]
        cursor = page["next"]
        if cursor is None:
            return


def print_images(images: Iterator[dict[str, Any]], console: Console, *, as_json: bool) -> int:
    """One line per image: `id  {metadata}` for people, or one JSON object per line (JSON Lines); returns how many."""
    count = 0
    for item in images:
        count += 1
        if as_json:
            console.file.write(json.dumps(item) + "\n")
        else:
            # Metadata is the uploader's text: printed as it is, never read as markup.
            line = f"{item['id']}  {json.dumps(item['metadata'], ensure_ascii=False)}"
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    return count


def print_collections(collections: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"{len(collections)} collections")
    for column in ("name", "count", "dim", "model", "metric", "created"):
        table.add_column(column)
    for c in collections:
        table.add_row(escape(c["name"]), str(c["count"]), str(c["dim"]), c["model"], c["metric"], c["created_at"])
    console.print(table)
