"""Parsing and validating VLM answers, and combining two answers by Borda count."""

from __future__ import annotations

import pytest

from services.reranker.ranking import NO_USABLE_RANKING, RawAnswer, UnusableAnswer, borda, parse_answer, validate


def test_structured_json_is_read_as_is() -> None:
    answer = parse_answer('{"ranked": [2, 0, 1], "best": 2, "reasons": "  the leopard print  "}')
    assert answer == RawAnswer(ranked=[2, 0, 1], best=2, reasons="the leopard print")


def test_json_in_a_code_fence_inside_prose_is_found() -> None:
    answer = parse_answer('Sure!\n```json\n{"ranked": [1, 0], "best": 1, "reasons": "blue"}\n```\nBye.')
    assert answer.ranked == [1, 0] and answer.reasons == "blue"


def test_json_embedded_in_prose_without_fence_is_found() -> None:
    answer = parse_answer('My answer is {"ranked": ["3", 1, 2.0, true], "reasons": "x"} as requested.')
    assert answer.ranked == [3, 1, 2]  # numeric strings and integral floats count; `true` is not index 1


def test_tutorial_text_format_is_understood() -> None:
    text = "Ranked list: [6, 1, 0]\n\nReasons: The most suitable item is index 6 because of the leopard pattern."
    answer = parse_answer(text)
    assert answer.ranked == [6, 1, 0]
    assert answer.reasons == "The most suitable item is index 6 because of the leopard pattern."


def test_prose_without_a_list_is_unusable() -> None:
    with pytest.raises(UnusableAnswer, match=NO_USABLE_RANKING):
        parse_answer("I like all of them, especially the third one.")


def test_duplicates_dropped_unknown_ignored_missing_appended_in_vector_order() -> None:
    ranking = validate(RawAnswer(ranked=[4, 4, 9, -1, 2], best=None, reasons=None), shown=5)
    assert ranking.order == [4, 2, 0, 1, 3]


def test_best_leads_when_it_disagrees_with_the_first_of_ranked() -> None:
    # The reasons explain `best`: the order must start with the item the explanation talks about.
    ranking = validate(RawAnswer(ranked=[0, 1, 2], best=2, reasons="about 2"), shown=3)
    assert ranking.order == [2, 0, 1]


def test_a_ranking_with_no_valid_index_is_unusable() -> None:
    with pytest.raises(UnusableAnswer, match=NO_USABLE_RANKING):
        validate(RawAnswer(ranked=[7, -2, 99], best=None, reasons="x"), shown=3)


def test_borda_count_ties_go_to_vector_order() -> None:
    # 0: 2+0=2, 1: 1+1=2, 2: 0+2=2 → a three-way tie, broken by vector order.
    assert borda([[0, 1, 2], [2, 1, 0]], 3) == [0, 1, 2]
    # 1 is second in both and first nowhere, yet wins: 1: 2+2=4, 0: 3+0=3, 2: 1+1=2, 3: 0+3=3.
    assert borda([[0, 1, 2, 3], [3, 1, 2, 0]], 4) == [1, 0, 3, 2]
