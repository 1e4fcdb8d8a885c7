"""Uploading images to the gateway in batches and following the index jobs, with progress bars.

Shared by `mmrag index` and `mmrag demo`: every batch is one index job; the bars show bytes leaving this
machine ("uploading") and images the embedder has finished ("indexing"). `mmrag index --urls` sends URLs instead,
which the workers fetch: one bar, of URLs fetched and indexed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from services.cli.client import GatewayClient, GatewayError
from services.cli.files import ImageSource


@dataclass
class IndexSummary:
    files: int
    indexed: int = 0
    duplicates: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    unit: str = "files"

    def line(self, collection: str) -> str:
        return (
            f"[bold]{collection}[/]: {self.indexed} indexed, {self.duplicates} already there, "
            f"{len(self.failures)} failed (of {self.files} {self.unit})"
        )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _follow_jobs(
    client: GatewayClient, jobs: list[dict[str, Any]], progress: Progress, bar: TaskID, summary: IndexSummary
) -> None:
    """Follow index jobs one after the other, advancing `bar` by the items each has done; add up their results."""
    done_before = 0
    for job in jobs:

        def show(state: dict[str, Any], base: int = done_before) -> None:
            progress.update(bar, completed=base + state["progress"]["done"])

        finished = client.follow(job, show)
        done_before += finished["progress"]["total"]
        summary.failures.extend(finished["progress"]["failed"])
        if finished["status"] != "succeeded" and not finished["progress"]["failed"]:
            detail = (finished.get("error") or {}).get("detail")
            raise GatewayError(f"index job {finished['id']} {finished['status']}: {detail}")
        result = finished.get("result") or {}
        summary.indexed += int(result.get("indexed", 0))
        summary.duplicates += int(result.get("duplicates", 0))


def _metadata_lines(names: list[str], metadata: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    lines = [json.dumps({**metadata[name], "filename": name}) for name in names if name in metadata]
    return "\n".join(lines).encode() if lines else None


def index_sources(
    client: GatewayClient,
    collection: str,
    sources: list[ImageSource],
    console: Console,
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    batch: int = 64,
) -> IndexSummary:
    """Upload `sources` in batches of `batch` files, then follow each index job to its end.

    `metadata` maps a source's name to the object stored with its vector. Raises GatewayError when a job
    fails as a whole (not when single files are rejected: those are in `failures`).
    """
    metadata = metadata or {}
    summary = IndexSummary(files=len(sources))
    progress = _progress(console)
    with progress:
        uploading = progress.add_task("uploading", total=len(sources))
        indexing = progress.add_task("indexing", total=len(sources))
        jobs = []
        for start in range(0, len(sources), batch):
            group = sources[start : start + batch]
            files = [(source.name, source.read()) for source in group]
            jobs.append(client.upload_images(collection, files, _metadata_lines([n for n, _ in files], metadata)))
            progress.advance(uploading, len(group))
        _follow_jobs(client, jobs, progress, indexing, summary)
    return summary


def index_urls(
    client: GatewayClient, collection: str, items: list[dict[str, Any]], console: Console, *, batch: int = 1000
) -> IndexSummary:
    """Send `items` ({"url", "metadata"} each) in requests of `batch`, then follow each index job to its end.

    Raises GatewayError when a request is refused or a job fails as a whole (not when single URLs fail: those are
    in `failures`, with the URL and the reason)."""
    summary = IndexSummary(files=len(items), unit="URLs")
    progress = _progress(console)
    with progress:
        fetching = progress.add_task("fetching and indexing", total=len(items))
        jobs = [client.index_urls(collection, items[start : start + batch]) for start in range(0, len(items), batch)]
        _follow_jobs(client, jobs, progress, fetching, summary)
    return summary
