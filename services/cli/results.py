"""Printing a finished search job for people: the ranked candidates, what the reranker did, the timings."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table


def print_search_result(job: dict[str, Any], console: Console) -> None:
    result = job["result"]
    if result.get("warning"):
        console.print(f"[yellow]{result['warning']}[/]")
    table = Table(title=f"{len(result['candidates'])} results in {result['collection']!r} ({result['model']})")
    for column in ("rank", "vector rank", "score", "id", "metadata"):
        table.add_column(column)
    for c in result["candidates"]:
        table.add_row(
            str(c["rank"]), str(c["vector_rank"]), f"{c['score']:.4f}", c["id"][:16], json.dumps(c["metadata"])
        )
    console.print(table)
    rerank = result["rerank"]
    if rerank["status"] == "applied":
        console.print(f"reranked by [bold]{rerank['model']}[/]; why #1: {rerank.get('explanation') or '(no reason)'}")
    else:
        console.print(f"rerank {rerank['status']}: {rerank.get('reason')} (the ranking above is the vector order)")
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in job["timings_ms"].items() if v is not None)
    console.print(f"[dim]{timings}[/]")
