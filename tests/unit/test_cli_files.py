"""What `mmrag index` and `mmrag demo` read from disk, and what the demo says when it cannot download."""

from __future__ import annotations

import functools
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from services.cli import demo
from services.cli.client import GatewayClient
from services.cli.files import collect_images, read_metadata
from tests.support.processes import refused_port

ARCHIVE = "amazon_reviews_2023_subset.tar.gz"


@pytest.fixture
def refused_url() -> Iterator[str]:
    """An address on 127.0.0.1 that refuses every connection for the whole test."""
    with refused_port() as port:
        yield f"http://127.0.0.1:{port}"


def _write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("./images_folder/empty.jpg.d")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    return path


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_a_folder_yields_its_images_recursively_with_names_relative_to_it(tmp_path: Path) -> None:
    _write(tmp_path / "b.jpg", b"b")
    _write(tmp_path / "sub" / "a.PNG", b"a")
    _write(tmp_path / "sub" / "deeper" / "c.webp", b"c")
    _write(tmp_path / "notes.txt")
    _write(tmp_path / "sub" / "._b.jpg")  # macOS resource fork, not an image
    sources = collect_images(tmp_path)
    assert [s.name for s in sources] == ["b.jpg", "sub/a.PNG", "sub/deeper/c.webp"]
    assert [s.read() for s in sources] == [b"b", b"a", b"c"]


def test_a_single_file_is_named_by_its_file_name(tmp_path: Path) -> None:
    image = _write(tmp_path / "deep" / "photo.jpeg", b"jpeg bytes")
    sources = collect_images(image)
    assert [(s.name, s.read()) for s in sources] == [("photo.jpeg", b"jpeg bytes")]


def test_an_empty_folder_yields_nothing(tmp_path: Path) -> None:
    _write(tmp_path / "readme.md")
    assert collect_images(tmp_path) == []


def test_archive_members_keep_their_paths_without_the_leading_dot_slash(tmp_path: Path) -> None:
    archive = _tar_gz(
        tmp_path / "gallery.tar.gz",
        {
            "./images_folder/images/one.jpg": b"1",
            "images_folder/images/two.png": b"2",
            "./images_folder/leopard.jpg": b"L",
            "./images_folder/README.txt": b"text",
            "./images_folder/._one.jpg": b"fork",
        },
    )
    sources = collect_images(archive)
    assert [s.name for s in sources] == [
        "images_folder/images/one.jpg",
        "images_folder/images/two.png",
        "images_folder/leopard.jpg",
    ]
    assert [s.read() for s in sources] == [b"1", b"2", b"L"]


def test_metadata_lines_are_keyed_by_filename_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "meta.jsonl",
        b'{"filename": "a.jpg", "title": "Tom\'s \\"best\\" case"}\n\n{"filename": "sub/b.png", "price": 3}\n',
    )
    assert read_metadata(path) == {"a.jpg": {"title": 'Tom\'s "best" case'}, "sub/b.png": {"price": 3}}


def test_metadata_that_is_not_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "meta.jsonl", b'{"filename": "a.jpg"}\n{"filename": "b.jpg",\n')
    with pytest.raises(SystemExit, match=r"meta\.jsonl:2: not JSON"):
        read_metadata(path)


@pytest.mark.parametrize("line", ['{"title": "no filename"}', '{"filename": 7}', '["a.jpg"]'])
def test_metadata_lines_need_a_filename_string(tmp_path: Path, line: str) -> None:
    path = _write(tmp_path / "meta.jsonl", line.encode())
    with pytest.raises(SystemExit, match=r'meta\.jsonl:1: each line needs a "filename" string'):
        read_metadata(path)


def test_demo_offline_says_exactly_what_to_provide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_url: str
) -> None:
    monkeypatch.setattr(demo, "DEMO_ARCHIVE_URL", f"{refused_url}/{ARCHIVE}")
    # The gateway is never reached: the data comes first.
    with GatewayClient(refused_url) as client, pytest.raises(demo.DemoError) as raised:
        demo.run_demo(client, data_dir=tmp_path, console=_quiet())
    message = str(raised.value)
    assert f"cannot download the demo data from {refused_url}/" in message
    assert "mmrag demo --images DIR --query IMG" in message
    assert [p.name for p in (tmp_path / "demo").iterdir()] == []  # no partial download left behind


def test_demo_needs_images_and_query_together(tmp_path: Path, refused_url: str) -> None:
    with GatewayClient(refused_url) as client, pytest.raises(demo.DemoError, match="go together"):
        demo.run_demo(client, data_dir=tmp_path, console=_quiet(), images=tmp_path)


@pytest.fixture
def archive_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on a free port serving the tutorial's archive layout."""
    served = tmp_path / "served"
    served.mkdir()
    _tar_gz(
        served / "subset.tar.gz",
        {
            "./images_folder/leopard.jpg": b"L",
            "./images_folder/images/a.jpg": b"a",
            "./images_folder/images/b.jpg": b"b",
        },
    )
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/subset.tar.gz"
    finally:
        server.shutdown()
        server.server_close()


def test_demo_data_is_downloaded_once_and_found_in_the_tutorial_layout(
    tmp_path: Path, archive_server: str, refused_url: str
) -> None:
    data_dir = tmp_path / "data"
    found = demo.fetch_demo_data(data_dir, _quiet(), archive_server)
    assert found.query.name == "leopard.jpg" and found.query.read_bytes() == b"L"
    assert found.images.name == "images"
    assert [s.name for s in collect_images(found.images)] == ["a.jpg", "b.jpg"]
    assert (data_dir / "demo" / "subset.tar.gz").is_file()
    # A second run uses what is on disk: an unreachable URL does not matter any more.
    assert demo.fetch_demo_data(data_dir, _quiet(), f"{refused_url}/{ARCHIVE}") == found


def test_mmrag_demo_offline_exits_1_with_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_url: str
) -> None:
    from typer.testing import CliRunner

    from services.cli.main import app
    from services.common.settings import load_settings

    monkeypatch.setattr(demo, "DEMO_ARCHIVE_URL", f"{refused_url}/{ARCHIVE}")
    monkeypatch.setenv("MMRAG_DATA_DIR", str(tmp_path))
    load_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["demo", "--url", refused_url])
    finally:
        load_settings.cache_clear()
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert output.startswith(f"cannot download the demo data from {refused_url}/")
    assert "Offline? Run it on your own images instead: mmrag demo --images DIR --query IMG" in output
