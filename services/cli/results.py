"""Printing a finished search job for people: the ranked candidates, what the reranker did, the timings.

Metadata comes from whoever indexed the images and the explanation from the VLM (which read that metadata), so
neither is trusted: every value is printed as plain text. Rich markup in it (`[link=…]` would be a clickable
terminal link) is escaped, and control characters (ESC sequences could move the cursor, retitle the terminal or
hide text) are removed.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Line breaks and tabs are harmless layout. Every other control character (ESC, BEL, CSI, …, categories Cc) is
# dropped, and so are formatting characters (Cf: bidi overrides could show text in another order than it is).
_KEPT_CONTROLS = frozenset("\n\t")
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf"})


def plain(value: Any) -> str:
    """`value` as text that Rich prints literally and a terminal cannot interpret."""
    text = "".join(
        ch for ch in str(value) if ch in _KEPT_CONTROLS or unicodedata.category(ch) not in _DROPPED_CATEGORIES
    )
    return escape(text)


def print_search_result(job: dict[str, Any], console: Console) -> None:
    result = job["result"]
    if result.get("warning"):
        console.print(f"[yellow]{plain(result['warning'])}[/]")
    title = f"{len(result['candidates'])} results in {result['collection']!r} ({result['model']})"
    table = Table(title=plain(title))
    for column in ("rank", "vector rank", "score", "id", "metadata"):
        table.add_column(column)
    for c in result["candidates"]:
        table.add_row(
            str(c["rank"]),
            str(c["vector_rank"]),
            f"{c['score']:.4f}",
            plain(c["id"][:16]),
            plain(json.dumps(c["metadata"], ensure_ascii=False)),
        )
    console.print(table)
    rerank = result["rerank"]
    if rerank["status"] == "applied":
        why = plain(rerank.get("explanation") or "(no reason)")
        console.print(f"reranked by [bold]{plain(rerank['model'])}[/]; why #1: {why}")
    else:
        console.print(
            f"rerank {plain(rerank['status'])}: {plain(rerank.get('reason'))} (the ranking above is the vector order)"
        )
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in job["timings_ms"].items() if v is not None)
    console.print(f"[dim]{plain(timings)}[/]")
