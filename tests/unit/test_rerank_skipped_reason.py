"""Why a search ends without a rerank: said in words a user can act on, min_score included."""

from __future__ import annotations

import pytest

from services.common.jobs import SearchParams, SearchQuery
from services.embedder.search import rerank_skipped_reason


def _params(*, rerank: bool = True, min_score: float | None = None) -> SearchParams:
    query = SearchQuery()
    return SearchParams(collection="c", instruction="red", limit=9, rerank=rerank, min_score=min_score, query=query)


@pytest.mark.parametrize(
    ("params", "found", "kept", "reason"),
    [
        (_params(rerank=False, min_score=0.5), 9, 0, "rerank=false in the request"),
        (_params(min_score=0.5), 9, 0, "nothing to rerank: all 9 candidates scored below min_score 0.5"),
        (_params(), 0, 0, "nothing to rerank: the search found no candidates (is the filter too narrow?)"),
        (_params(min_score=0.25), 9, 1, "fewer than two candidates to rerank (8 scored below min_score 0.25)"),
        (_params(), 1, 1, "fewer than two candidates to rerank"),
    ],
)  # fmt: skip
def test_the_reason_names_what_left_nothing_to_rerank(params: SearchParams, found: int, kept: int, reason: str) -> None:
    assert rerank_skipped_reason(params, found, kept) == reason


def test_a_search_with_neither_image_is_text_only() -> None:
    assert SearchQuery().text_only
    assert not SearchQuery(blob_id="query:x").text_only and not SearchQuery(image_id="a" * 64).text_only
