"""Dropping a Milvus collection, and a collection made again under the same name by another client of the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.embedder.index import VectorIndex

DIM = 8


def _row(index: VectorIndex, collection: str, i: int) -> None:
    vector = np.eye(DIM, dtype=np.float32)[i : i + 1]
    index.upsert(collection, [f"{i:064x}"], vector, ["png"], [{}])


def test_a_collection_dropped_elsewhere_is_made_again_for_its_next_generation(tmp_path: Path) -> None:
    uri = str(tmp_path / "drop.db")
    worker, dropper = VectorIndex(uri), VectorIndex(uri)  # two processes' views of one index
    try:
        worker.ensure_collection("c", DIM, "first")
        _row(worker, "c", 0)
        assert worker.open("c", "first")

        assert dropper.drop("c") is True
        assert dropper.drop("c") is False
        assert not dropper.open("c", "first")

        # The worker still has "c" loaded from before. A new generation (the registry's new created_at) makes it
        # look again, and create the collection, instead of writing into the one that is gone.
        worker.ensure_collection("c", DIM, "second")
        _row(worker, "c", 1)
        worker.flush("c")
        assert worker.count("c") == 1
        assert worker.existing_ids("c", [f"{0:064x}", f"{1:064x}"]) == {f"{1:064x}"}
    finally:
        worker.close()
        dropper.close()
