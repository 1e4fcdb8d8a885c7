"""`mmrag demo`: the tutorial end to end through the gateway (its data, the leopard query, the ranked answer).

The tutorial's Amazon Reviews 2023 subset (about 900 product images and `leopard.jpg`) is downloaded once into
`MMRAG_DATA_DIR/demo`; `--images DIR --query IMG` runs the same steps on local data instead.
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from services.cli.client import GatewayClient, GatewayError
from services.cli.files import collect_images
from services.cli.indexing import index_sources
from services.cli.results import print_search_result

DEMO_ARCHIVE_URL = "https://github.com/milvus-io/bootcamp/releases/download/data/amazon_reviews_2023_subset.tar.gz"
DEMO_QUERY_NAME = "leopard.jpg"
DEMO_INSTRUCTION = "phone case with this image theme"
DEMO_COLLECTION = "demo"
OFFLINE_HINT = "mmrag demo --images DIR --query IMG [--instruction TEXT]"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what to do about it."""


@dataclass(frozen=True)
class DemoData:
    images: Path
    query: Path


def _download(url: str, target: Path, console: Console) -> None:
    partial = target.with_name(target.name + ".part")
    progress = Progress(
        TextColumn("[bold]downloading the demo data"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress, httpx.stream("GET", url, follow_redirects=True, timeout=30) as response:
            response.raise_for_status()
            size = response.headers.get("content-length")
            task = progress.add_task("download", total=int(size) if size else None)
            with partial.open("wb") as handle:
                for block in response.iter_bytes(1 << 20):
                    handle.write(block)
                    progress.advance(task, len(block))
    except (httpx.HTTPError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DemoError(
            f"cannot download the demo data from {url} ({type(error).__name__}: {error or 'no details'}). "
            f"Offline? Run it on your own images instead: {OFFLINE_HINT}"
        ) from None
    partial.replace(target)


def _extract(archive: Path, into: Path) -> None:
    staging = into.with_name(into.name + ".extracting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            # The "data" filter refuses absolute paths, links out of the folder and device files.
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise DemoError(f"the demo archive {archive} is damaged ({error}); run `mmrag demo` again") from None
    shutil.rmtree(into, ignore_errors=True)
    staging.replace(into)


def _locate(root: Path) -> DemoData | None:
    """The tutorial's layout: `leopard.jpg` next to an `images/` folder of product photos."""
    query = next(iter(sorted(root.rglob(DEMO_QUERY_NAME))), None) if root.is_dir() else None
    if query is None:
        return None
    images = query.parent / "images"
    return DemoData(images=images if images.is_dir() else query.parent, query=query)


def fetch_demo_data(data_dir: Path, console: Console, url: str | None = None) -> DemoData:
    """The tutorial's images and query under `data_dir/demo`, downloaded and extracted on first use."""
    demo_dir = data_dir / "demo"
    extracted = demo_dir / "extracted"
    found = _locate(extracted)
    if found is not None:
        return found
    demo_dir.mkdir(parents=True, exist_ok=True)
    archive_url = url or DEMO_ARCHIVE_URL
    archive = demo_dir / Path(httpx.URL(archive_url).path).name
    if not archive.is_file():
        _download(archive_url, archive, console)
    _extract(archive, extracted)
    found = _locate(extracted)
    if found is None:
        raise DemoError(f"{archive_url} holds no {DEMO_QUERY_NAME}: run your own data with {OFFLINE_HINT}")
    return found


def run_demo(
    client: GatewayClient,
    *,
    data_dir: Path,
    console: Console,
    images: Path | None = None,
    query: Path | None = None,
    instruction: str = DEMO_INSTRUCTION,
    collection: str = DEMO_COLLECTION,
    limit: int = 9,
    panorama: Path | None = None,
    archive_url: str | None = None,
) -> dict[str, Any]:
    """Index the demo (or given) images, search with the query and instruction, print the answer.

    Returns the finished search job; raises DemoError (what to do) or GatewayError (the gateway's problem).
    """
    if (images is None) != (query is None):
        raise DemoError(f"--images and --query go together: {OFFLINE_HINT}")
    if images is not None and query is not None:
        data = DemoData(images=images, query=query)
    else:
        data = fetch_demo_data(data_dir, console, archive_url)
    query_path = data.query.resolve()
    sources = [s for s in collect_images(data.images) if (data.images / s.name).resolve() != query_path]
    if not sources:
        raise DemoError(f"no images found under {data.images}")
    console.print(f"indexing {len(sources)} images from {data.images} into collection {collection!r}")
    # Each file's name goes into its metadata, so the printed ranking names files, not hashes.
    summary = index_sources(client, collection, sources, console, metadata={s.name: {"file": s.name} for s in sources})
    console.print(f"{summary.line(collection)}; searching with {data.query.name} + {instruction!r}")
    fields = {"instruction": instruction, "limit": str(limit), "collection": collection, "rerank": "true"}
    job = client.submit_search(data.query.read_bytes(), data.query.name, fields)
    with console.status("searching") as status:
        job = client.follow(job, lambda state: status.update(f"{state['status']}: {state['stage']}"))
    if job["status"] != "succeeded":
        raise DemoError(f"search job {job['id']} {job['status']}: {(job.get('error') or {}).get('detail')}")
    print_search_result(job, console)
    panorama_url = job["result"]["rerank"].get("panorama_url")
    if panorama_url:
        target = panorama or data_dir / "demo" / "panorama.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.write_bytes(client.download(panorama_url))
            console.print(f"panorama (what the VLM saw) saved to {target}")
        except GatewayError as error:
            console.print(f"[yellow]no panorama: {error}[/]")
    return job
