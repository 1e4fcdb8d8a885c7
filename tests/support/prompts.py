"""Reading the item details back out of a rerank prompt, as a VLM would see them."""

from __future__ import annotations

import json
from typing import Any

from services.reranker.prompt import ITEMS_END, ITEMS_START


def items_of(user_text: str) -> list[dict[str, Any]]:
    """The item details of a user message: the one block between the delimiters, parsed as JSON (which fails the
    test if the block is not valid JSON or the delimiters appear more than once)."""
    assert user_text.count(ITEMS_START) == 1 and user_text.count(ITEMS_END) == 1, user_text
    block = user_text.split(ITEMS_START + "\n", 1)[1].split("\n" + ITEMS_END, 1)[0]
    items: list[dict[str, Any]] = json.loads(block)
    return items
