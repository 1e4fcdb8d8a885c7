"""The `mmrag` command line."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from services.cli.client import GatewayClient, GatewayError
from services.cli.demo import DEMO_COLLECTION, DEMO_INSTRUCTION, DemoError, run_demo
from services.cli.files import collect_images, read_metadata, read_url_items
from services.cli.health import health_app
from services.cli.indexing import index_sources, index_urls
from services.cli.keys import keys_app
from services.cli.listing import print_collections, print_images, walk_images
from services.cli.results import plain, print_search_result
from services.cli.services import EmbedderWork, WorkerName
from services.common.logs import configure_logging
from services.common.settings import ConfigurationError, Settings, load_settings

app = typer.Typer(help="mmrag: composed image search (image + instruction → ranked images).", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

UrlOption = Annotated[str | None, typer.Option("--url", help="gateway URL (default: MMRAG_GATEWAY_URL)")]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", help="the API key to send (default: MMRAG_API_KEY)", show_default=False)
]
CollectionOption = Annotated[str, typer.Option("--collection", "-c", help="collection name")]


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        err.print(f"[red]{error}[/]")
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _gateway_errors() -> Iterator[None]:
    """A refusal or failure from the gateway ends the command with exit 1 and its message, printed as plain text
    (a problem detail may quote what a client sent, markup included)."""
    try:
        yield
    except GatewayError as error:
        err.print(f"[red]{plain(str(error))}[/]")
        raise typer.Exit(1) from None


def _exit_unless_succeeded(job: dict[str, Any]) -> None:
    if job["status"] != "succeeded":
        err.print(f"[red]job {job['id']} {job['status']}[/]: {plain((job.get('error') or {}).get('detail'))}")
        raise typer.Exit(1)


def _client(url: str | None, api_key: str | None) -> GatewayClient:
    settings = _settings()
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    return GatewayClient(url or settings.gateway_url, api_key=key)


def _check_exposure(settings: Settings, host: str) -> None:
    from services.gateway.exposure import check_exposure

    try:
        check_exposure(settings, host)
    except ConfigurationError as error:
        err.print(f"[red]{error}[/]")
        raise typer.Exit(2) from None


@app.command()
def up(
    host: Annotated[str, typer.Option(help="gateway bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gateway port")] = 8000,
) -> None:
    """Run the whole local stack (Redis if needed, both workers, the gateway) until Ctrl-C."""
    from services.cli.stack import run_stack

    configure_logging(service="stack")
    settings = _settings()
    _check_exposure(settings, host)
    run_stack(settings, host, port)


@app.command()
def worker(
    name: Annotated[
        WorkerName,
        typer.Argument(help="embedder (queues embed-search, then embed-index) or reranker (queue rerank)"),
    ],
    concurrency: Annotated[int | None, typer.Option(help="worker processes (default: 1 embedder, 4 reranker)")] = None,
    only: Annotated[
        EmbedderWork | None,
        typer.Option(help="embedder only: take just searches (and deletes) or just index chunks"),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Run one Celery worker in the foreground (what a container runs)."""
    from services.cli.services import run_worker

    _settings()
    if only is not None and name != "embedder":
        err.print("[red]--only applies to the embedder: the reranker has one kind of work[/]")
        raise typer.Exit(2)
    configure_logging(loglevel, service=name)
    run_worker(name, concurrency, loglevel, only)


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    loglevel: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Run the HTTP gateway in the foreground."""
    from services.cli.services import run_gateway

    configure_logging(loglevel, service="gateway")
    _check_exposure(_settings(), host)
    run_gateway(host, port, workers, loglevel)


@app.command()
def index(
    path: Annotated[
        Path | None,
        typer.Argument(help="a folder of images (recursive), an image, or a .tar.gz", exists=True, show_default=False),
    ] = None,
    collection: CollectionOption = "default",
    metadata: Annotated[
        Path | None, typer.Option(help="JSON Lines file: one object per image, matched by 'filename'", exists=True)
    ] = None,
    urls: Annotated[
        Path | None,
        typer.Option(
            "--urls",
            help='instead of PATH: JSON Lines file, one {"url": ..., "metadata": {...}} per image; the workers fetch',
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(help="files per upload request (default 64), or URLs per request (1000)", min=1, max=10_000),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Index a folder of images, or images at URLs (--urls), into a collection, with progress and a summary."""
    if (path is None) == (urls is None):
        err.print("[red]give either PATH (images on this machine) or --urls FILE (images the workers fetch)[/]")
        raise typer.Exit(2)
    if urls is not None and metadata is not None:
        err.print("[red]--metadata goes with PATH; with --urls, put each image's metadata on its line[/]")
        raise typer.Exit(2)
    with _gateway_errors(), _client(url, api_key) as client:
        if urls is not None:
            items = read_url_items(urls)
            if not items:
                err.print(f"[red]no URLs in {urls}[/]")
                raise typer.Exit(1)
            summary = index_urls(client, collection, items, err, batch=batch or 1000)
        else:
            assert path is not None
            files = collect_images(path)
            if not files:
                err.print(f"[red]no images found under {path}[/]")
                raise typer.Exit(1)
            summary = index_sources(
                client,
                collection,
                files,
                err,
                metadata=read_metadata(metadata) if metadata else None,
                batch=batch or 64,
            )
    for failure in summary.failures:
        where = failure.get("url") or failure.get("filename")
        err.print(f"[yellow]failed[/] {plain(where)}: {plain(failure.get('reason'))}")
    console.print(summary.line(collection))
    if summary.indexed + summary.duplicates == 0:
        raise typer.Exit(1)


@app.command()
def search(
    image: Annotated[
        Path | None, typer.Argument(help="the query image (none: search by text alone)", exists=True, dir_okay=False)
    ] = None,
    instruction: Annotated[
        str | None,
        typer.Option("--instruction", "-i", "--text", "-t", help="what to change or look for; alone, a text search"),
    ] = None,
    limit: Annotated[int, typer.Option(help="number of results", min=1, max=50)] = 9,
    min_score: Annotated[
        float | None, typer.Option(help="drop candidates with a cosine score below this (-1 to 1)", min=-1, max=1)
    ] = None,
    collection: CollectionOption = "default",
    rerank: Annotated[bool, typer.Option(help="rerank with the VLM")] = True,
    filter_json: Annotated[str | None, typer.Option("--filter", help='metadata equalities as JSON: {"k": "v"}')] = None,
    panorama: Annotated[Path | None, typer.Option(help="save the panorama sent to the VLM here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the job as JSON")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Search with an image and an instruction, or with --text alone; exits non-zero when the job fails."""
    if image is None and not (instruction or "").strip():
        err.print('[red]give a query image, or --text "what to look for" to search by text alone[/]')
        raise typer.Exit(2)
    fields = {"limit": str(limit), "collection": collection, "rerank": str(rerank).lower()}
    if instruction:
        fields["instruction"] = instruction
    if min_score is not None:
        fields["min_score"] = repr(min_score)
    if filter_json:
        fields["filter"] = filter_json
    with _gateway_errors(), _client(url, api_key) as client:
        if image is None:
            job = client.submit_search(None, "", fields)
        else:
            job = client.submit_search(image.read_bytes(), image.name, fields)
        with err.status("queued") as status:
            job = client.follow(job, lambda j: status.update(f"{j['status']}: {j['stage']}"))
        if panorama and job["status"] == "succeeded" and job["result"]["rerank"].get("panorama_url"):
            panorama.write_bytes(client.download(job["result"]["rerank"]["panorama_url"]))
            err.print(f"panorama saved to {panorama}")
    if as_json:
        sys.stdout.write(json.dumps(job, indent=2) + "\n")
    elif job["status"] == "succeeded":
        print_search_result(job, console)
    _exit_unless_succeeded(job)


@app.command("ls")
def list_images(
    collection: Annotated[str, typer.Argument(help="the collection")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per image (JSON Lines)")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List a collection's images in id order: each id and its metadata."""
    with _gateway_errors(), _client(url, api_key) as client:
        count = print_images(walk_images(client, collection), console, as_json=as_json)
    err.print(f"{count} images in {collection!r}", markup=False)


collections_app = typer.Typer(help="Collections: list them, drop one.", no_args_is_help=True)


@collections_app.command("list")
def list_collections(
    as_json: Annotated[bool, typer.Option("--json", help="print the collections as JSON")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The collections with their counts, dimension and model."""
    with _gateway_errors(), _client(url, api_key) as client:
        collections = client.request("GET", "/v1/collections").json()
    if as_json:
        sys.stdout.write(json.dumps(collections, indent=2) + "\n")
    else:
        print_collections(collections, console)


@collections_app.command("delete")
def delete_collection(
    name: Annotated[str, typer.Argument(help="the collection to drop")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Drop a collection: its vectors, its stored images and its index jobs still running. Cannot be undone."""
    if not yes:
        typer.confirm(f"Drop collection {name!r} and all its images?", abort=True)
    with _gateway_errors(), _client(url, api_key) as client:
        job = client.request("DELETE", f"/v1/collections/{name}").json()
        with err.status("deleting") as status:
            job = client.follow(job, lambda j: status.update(f"{j['status']}: {j['stage']}"))
    _exit_unless_succeeded(job)
    stopped = job["result"].get("failed_index_jobs") or []
    console.print(f"dropped {name!r}" + (f" ({len(stopped)} index jobs on it were stopped)" if stopped else ""))


@app.command()
def demo(
    images: Annotated[
        Path | None, typer.Option(help="your own gallery folder, not the tutorial's", exists=True, file_okay=False)
    ] = None,
    query: Annotated[Path | None, typer.Option(help="your own query image (with --images)", exists=True)] = None,
    instruction: Annotated[str, typer.Option("--instruction", "-i", help="the instruction")] = DEMO_INSTRUCTION,
    collection: CollectionOption = DEMO_COLLECTION,
    limit: Annotated[int, typer.Option(help="number of results", min=1, max=50)] = 9,
    panorama: Annotated[Path | None, typer.Option(help="where to save the panorama")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The tutorial in one command: its ~900 product images, the leopard query, the ranked answer, the panorama."""
    settings = _settings()
    try:
        with _client(url, api_key) as client:
            run_demo(
                client,
                data_dir=settings.data_dir,
                console=console,
                images=images,
                query=query,
                instruction=instruction,
                collection=collection,
                limit=limit,
                panorama=panorama,
            )
    except (DemoError, GatewayError) as error:
        err.print(str(error), markup=False)
        raise typer.Exit(1) from None


app.add_typer(health_app, name="health", help="health checks for containers and probes")
app.add_typer(collections_app, name="collections", help="collections: list, delete")
app.add_typer(keys_app, name="keys", help="API keys: create, list, revoke (in Redis, at MMRAG_REDIS_URL)")

if __name__ == "__main__":
    app()
