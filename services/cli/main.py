"""The `mmrag` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.client import GatewayClient, GatewayError
from services.cli.files import collect_images, read_metadata
from services.cli.services import WorkerName
from services.common.logs import configure_logging
from services.common.settings import ConfigurationError, Settings, load_settings

app = typer.Typer(help="mmrag: composed image search (image + instruction → ranked images).", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

UrlOption = Annotated[str | None, typer.Option("--url", help="gateway URL (default: MMRAG_GATEWAY_URL)")]
CollectionOption = Annotated[str, typer.Option("--collection", "-c", help="collection name")]


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        err.print(f"[red]{error}[/]")
        raise typer.Exit(2) from None


def _client(url: str | None) -> GatewayClient:
    return GatewayClient(url or _settings().gateway_url)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="gateway bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gateway port")] = 8000,
) -> None:
    """Run the whole local stack (Redis if needed, both workers, the gateway) until Ctrl-C."""
    from services.cli.stack import run_stack

    configure_logging()
    run_stack(_settings(), host, port)


@app.command()
def worker(
    name: Annotated[WorkerName, typer.Argument(help="embedder (queue embed) or reranker (queue rerank)")],
    concurrency: Annotated[int | None, typer.Option(help="worker processes (default: 1 embedder, 4 reranker)")] = None,
    loglevel: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Run one Celery worker in the foreground (what a container runs)."""
    from services.cli.services import run_worker

    _settings()
    configure_logging(loglevel)
    run_worker(name, concurrency, loglevel)


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    loglevel: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Run the HTTP gateway in the foreground."""
    from services.cli.services import run_gateway

    _settings()
    configure_logging(loglevel)
    run_gateway(host, port, workers, loglevel)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="a folder of images (recursive), an image, or a .tar.gz", exists=True)],
    collection: CollectionOption = "default",
    metadata: Annotated[
        Path | None, typer.Option(help="JSON Lines file: one object per image, matched by 'filename'", exists=True)
    ] = None,
    batch: Annotated[int, typer.Option(help="files per upload request", min=1, max=1000)] = 64,
    url: UrlOption = None,
) -> None:
    """Index a folder of images into a collection, with progress and a summary."""
    files = collect_images(path)
    if not files:
        err.print(f"[red]no images found under {path}[/]")
        raise typer.Exit(1)
    meta = read_metadata(metadata) if metadata else {}
    totals = {"indexed": 0, "duplicates": 0, "failed": 0}
    failures: list[dict[str, Any]] = []
    try:
        with _client(url) as client, _progress() as progress:
            uploading = progress.add_task("uploading", total=len(files))
            indexing = progress.add_task("indexing", total=len(files))
            jobs = []
            for start in range(0, len(files), batch):
                group = files[start : start + batch]
                payload = [(source.name, source.read()) for source in group]
                lines = [json.dumps({"filename": name, **meta[name]}) for name, _ in payload if name in meta]
                jobs.append(client.upload_images(collection, payload, "\n".join(lines).encode() or None))
                progress.advance(uploading, len(group))
            done_before = 0
            for job in jobs:

                def show(j: dict[str, Any], base: int = done_before) -> None:
                    progress.update(indexing, completed=base + j["progress"]["done"])

                finished = client.follow(job, show)
                done_before += finished["progress"]["total"]
                failures.extend(finished["progress"]["failed"])
                if finished["status"] != "succeeded" and not finished["progress"]["failed"]:
                    raise GatewayError(f"index job {finished['id']} {finished['status']}: {finished['error']}")
                for key in ("indexed", "duplicates"):
                    totals[key] += (finished.get("result") or {}).get(key, 0)
    except GatewayError as error:
        err.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    totals["failed"] = len(failures)
    for failure in failures:
        err.print(f"[yellow]failed[/] {failure.get('filename')}: {failure.get('reason')}")
    console.print(
        f"[bold]{collection}[/]: {totals['indexed']} indexed, {totals['duplicates']} already there, "
        f"{totals['failed']} failed (of {len(files)} files)"
    )
    if totals["indexed"] + totals["duplicates"] == 0:
        raise typer.Exit(1)


def _print_search(job: dict[str, Any]) -> None:
    result = job["result"]
    if result.get("warning"):
        err.print(f"[yellow]{result['warning']}[/]")
    table = Table(title=f"{len(result['candidates'])} results in {result['collection']!r} ({result['model']})")
    for column in ("rank", "vector rank", "score", "id", "metadata"):
        table.add_column(column)
    for c in result["candidates"]:
        table.add_row(
            str(c["rank"]), str(c["vector_rank"]), f"{c['score']:.4f}", c["id"][:16], json.dumps(c["metadata"])
        )
    console.print(table)
    rerank = result["rerank"]
    console.print(f"rerank: [bold]{rerank['status']}[/]" + (f" ({rerank['model']})" if rerank.get("model") else ""))
    if rerank.get("explanation"):
        console.print(f"[bold]why #1:[/] {rerank['explanation']}")
    if rerank.get("reason"):
        console.print(f"reason: {rerank['reason']}")
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in job["timings_ms"].items() if v is not None)
    console.print(f"[dim]{timings}[/]")


@app.command()
def search(
    image: Annotated[Path, typer.Argument(help="the query image", exists=True, dir_okay=False)],
    instruction: Annotated[str | None, typer.Option("--instruction", "-i", help="what to change or look for")] = None,
    limit: Annotated[int, typer.Option(help="number of results", min=1, max=50)] = 9,
    collection: CollectionOption = "default",
    rerank: Annotated[bool, typer.Option(help="rerank with the VLM")] = True,
    filter_json: Annotated[str | None, typer.Option("--filter", help='metadata equalities as JSON: {"k": "v"}')] = None,
    panorama: Annotated[Path | None, typer.Option(help="save the panorama sent to the VLM here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the job as JSON")] = False,
    url: UrlOption = None,
) -> None:
    """Search with an image and an instruction; exits non-zero when the job fails."""
    fields = {"limit": str(limit), "collection": collection, "rerank": str(rerank).lower()}
    if instruction:
        fields["instruction"] = instruction
    if filter_json:
        fields["filter"] = filter_json
    try:
        with _client(url) as client:
            job = client.submit_search(image.read_bytes(), image.name, fields)
            with err.status("queued") as status:
                job = client.follow(job, lambda j: status.update(f"{j['status']}: {j['stage']}"))
            if panorama and job["status"] == "succeeded" and job["result"]["rerank"].get("panorama_url"):
                panorama.write_bytes(client.download(job["result"]["rerank"]["panorama_url"]))
                err.print(f"panorama saved to {panorama}")
    except GatewayError as error:
        err.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(job, indent=2) + "\n")
    elif job["status"] == "succeeded":
        _print_search(job)
    if job["status"] != "succeeded":
        err.print(f"[red]job {job['id']} {job['status']}[/]: {(job.get('error') or {}).get('detail')}")
        raise typer.Exit(1)


def _mount_optional() -> None:
    try:
        from services.cli.health import health_app
    except ImportError:
        return
    app.add_typer(health_app, name="health", help="liveness checks for containers and probes")


_mount_optional()

if __name__ == "__main__":
    app()
