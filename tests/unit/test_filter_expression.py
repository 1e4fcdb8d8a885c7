from __future__ import annotations

import pytest

from services.common.errors import InvalidRequest
from services.embedder.index import filter_expression


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
