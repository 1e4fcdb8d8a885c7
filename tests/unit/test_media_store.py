"""The media store on disk: pages in id order from a cursor, and the metadata sidecar beside each image."""

from __future__ import annotations

import hashlib
from pathlib import Path

from services.common.media import MediaStore


def _blobs(count: int) -> list[bytes]:
    return [f"image bytes {i}".encode() for i in range(count)]


def _walk(store: MediaStore, collection: str, limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.page(collection, cursor, limit)
        seen.extend(image.id for image in page)
        if len(page) < limit:
            return seen
        cursor = page[-1].id


def test_pages_walk_every_image_once_in_id_order_across_prefix_folders(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    ids = [store.put("gallery", data, "png") for data in _blobs(40)]
    assert len({i[:2] for i in ids}) > 10  # spread over many prefix folders
    for limit in (1, 3, 7, 40, 100):
        assert _walk(store, "gallery", limit) == sorted(ids)


def test_a_page_starts_after_the_cursor_even_when_the_cursor_image_is_gone(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    ids = sorted(store.put("gallery", data, "jpg") for data in _blobs(12))
    store.delete("gallery", ids[4])
    page = store.page("gallery", ids[4], 3)
    assert [image.id for image in page] == ids[5:8]
    assert {image.ext for image in page} == {"jpg"}


def test_temporary_files_and_sidecars_are_not_listed_as_images(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = store.put("gallery", b"one image", "png", {"title": "one"})
    folder = tmp_path / "gallery" / digest[:2]
    (folder / ".upload-abc123").write_bytes(b"half written")
    (folder / "notes.txt").write_text("stray")
    assert [(image.id, image.ext) for image in store.page("gallery", None, 10)] == [(digest, "png")]
    assert store.find("gallery", digest) == folder / f"{digest}.png"


def test_metadata_is_kept_from_the_first_upload_and_removed_with_the_image(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = store.put("gallery", b"same bytes", "png", {"title": "first", "tags": ["a", "b"]})
    assert digest == hashlib.sha256(b"same bytes").hexdigest()
    store.put("gallery", b"same bytes", "png", {"title": "second"})
    assert store.metadata("gallery", digest) == {"title": "first", "tags": ["a", "b"]}

    assert store.delete("gallery", digest)
    assert store.metadata("gallery", digest) == {}
    assert list((tmp_path / "gallery" / digest[:2]).iterdir()) == []


def test_an_image_without_metadata_and_an_unknown_collection_read_as_empty(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    digest = store.put("gallery", b"plain", "gif")
    assert store.metadata("gallery", digest) == {}
    assert store.page("nothing_here", None, 5) == []


def test_dropping_a_collection_removes_it_whole_and_leaves_the_others(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    dropped = [store.put("old", data, "png", {"n": 1}) for data in _blobs(5)]
    kept = store.put("other", b"another image", "png")
    # A drop cut short earlier left trash behind: the next drop empties it.
    (tmp_path / "_trash" / "old-0123").mkdir(parents=True)
    (tmp_path / "_trash" / "old-0123" / "leftover.png").write_bytes(b"x")

    assert store.drop_collection("old") is True
    assert store.page("old", None, 10) == [] and all(store.find("old", i) is None for i in dropped)
    assert store.metadata("old", dropped[0]) == {}
    assert list((tmp_path / "_trash").iterdir()) == []
    assert store.read("other", kept) == b"another image"
    assert store.drop_collection("old") is False
    # The name is free again: a new upload starts an empty collection.
    again = store.put("old", b"new image", "png")
    assert [image.id for image in store.page("old", None, 10)] == [again]
