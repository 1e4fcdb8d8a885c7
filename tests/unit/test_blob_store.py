"""Query images and panoramas are files under the media store, readable for the job TTL, never in Redis."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from services.common.blobs import AsyncBlobStore, BlobStore, panorama_blob_id, query_blob_id


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_blob_reads_back_until_it_is_deleted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, ttl_s=60)
    store.put(query_blob_id("abc123"), b"query bytes")
    store.put(panorama_blob_id("abc123"), b"panorama bytes")
    assert store.get(query_blob_id("abc123")) == b"query bytes"
    assert store.get(panorama_blob_id("abc123")) == b"panorama bytes"
    store.delete(query_blob_id("abc123"))
    assert store.get(query_blob_id("abc123")) is None
    assert store.get(panorama_blob_id("abc123")) == b"panorama bytes"
    store.delete(query_blob_id("abc123"))  # deleting twice is fine
    assert store.get(query_blob_id("never-written")) is None


def test_an_expired_blob_is_gone_and_the_sweep_removes_only_expired_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, ttl_s=60)
    store.put(query_blob_id("old"), b"old")
    store.put(query_blob_id("new"), b"new")
    _age(tmp_path / "query" / "old", 120)
    assert store.get(query_blob_id("old")) is None
    assert not (tmp_path / "query" / "old").exists()
    store.put(panorama_blob_id("old"), b"old")
    _age(tmp_path / "panorama" / "old", 120)
    assert store.sweep() == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["new"]


def test_a_write_replaces_the_whole_blob_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, ttl_s=60)
    store.put(query_blob_id("j1"), b"a" * 1000)
    store.put(query_blob_id("j1"), b"b" * 10)
    assert store.get(query_blob_id("j1")) == b"b" * 10
    assert [p.name for p in (tmp_path / "query").iterdir()] == ["j1"]


@pytest.mark.parametrize("blob_id", ["query:../../etc/passwd", "other:abc", "query:", "panorama:a/b", "abc"])
def test_a_blob_id_cannot_name_a_path_outside_the_store(tmp_path: Path, blob_id: str) -> None:
    store = BlobStore(tmp_path, ttl_s=60)
    with pytest.raises(ValueError, match="not a blob id"):
        store.put(blob_id, b"x")
    with pytest.raises(ValueError, match="not a blob id"):
        store.get(blob_id)


def test_the_async_store_shares_the_files(tmp_path: Path) -> None:
    async def scenario() -> bytes | None:
        store = AsyncBlobStore(tmp_path, ttl_s=60)
        await store.put(query_blob_id("j2"), b"from the gateway")
        return await store.get(query_blob_id("j2"))

    assert asyncio.run(scenario()) == b"from the gateway"
    assert BlobStore(tmp_path, ttl_s=60).get(query_blob_id("j2")) == b"from the gateway"
