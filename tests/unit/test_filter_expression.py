from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidRequest
from services.embedder.index import VectorIndex, filter_expression


def test_values_become_escaped_literals() -> None:
    assert filter_expression({}) == ""
    assert filter_expression({"b": 2, "a": "x"}) == 'metadata["a"] == "x" and metadata["b"] == 2'
    assert filter_expression({"flag": True}) == 'metadata["flag"] == true'


def test_quotes_in_a_value_cannot_change_the_expression() -> None:
    expression = filter_expression({"title": 'a" or 1==1 or "'})
    assert expression == 'metadata["title"] == "a\\" or 1==1 or \\""'


def test_keys_must_be_plain_names() -> None:
    with pytest.raises(InvalidRequest):
        filter_expression({'a"] or true or metadata["b': "x"})


@pytest.mark.parametrize(
    "value", ["\x00", "bell\x07", "esc\x1b[31m", float("nan"), float("inf")], ids=["nul", "bel", "esc", "nan", "inf"]
)
def test_values_milvus_cannot_express_are_refused_saying_why(value: str | float) -> None:
    with pytest.raises(InvalidRequest, match=r"control character|finite number"):
        filter_expression({"title": value})


TRICKY_TITLES = [
    "café",
    "日本の電話ケース",
    "leopard 🐆",
    'Tom\'s "best" case',
    'a" or 1==1 or "',
    "back\\slash \\",
    "tab\there",
    "two\nlines\r",
    "plain",
]


@pytest.fixture(scope="module")
def titled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    """A real Milvus Lite collection with one row per tricky title."""
    index = VectorIndex(str(Path(tmp_path_factory.mktemp("lite")) / "filters.db"))
    index.ensure_collection("titles", 16)
    vectors = np.eye(16, dtype=np.float32)[: len(TRICKY_TITLES)]
    ids = [f"{i:064x}" for i in range(len(TRICKY_TITLES))]
    index.upsert("titles", ids, vectors, ["png"] * len(ids), [{"title": t} for t in TRICKY_TITLES])
    index.flush("titles")
    yield index
    index.close()


@pytest.mark.parametrize("title", TRICKY_TITLES)
def test_a_filter_matches_exactly_the_item_with_that_value_on_milvus_lite(titled: VectorIndex, title: str) -> None:
    hits = titled.search("titles", np.ones(16, dtype=np.float32), 20, {"title": title})
    assert [hit.metadata["title"] for hit in hits] == [title]
