"""Turning a VLM's answer into a trustworthy order: parse it, validate it into a permutation, combine two answers.

Every index here is a 0-based position on the panorama that was shown (see prompt.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final


class UnusableAnswer(ValueError):
    """The VLM's answer holds no ranking we can use; the message is the user-facing reason."""


@dataclass(frozen=True)
class RawAnswer:
    """What the VLM said, before validation: indices may repeat, be out of range, or miss some."""

    ranked: list[int]
    best: int | None
    reasons: str | None


@dataclass(frozen=True)
class Ranking:
    """A validated answer: `order` is a permutation of the shown indices, best first."""

    order: list[int]
    reasons: str | None


NO_USABLE_RANKING: Final = "VLM answered no usable ranking"

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TUTORIAL_LIST = re.compile(r"ranked\s+list\s*:?\s*\[([^\]]*)\]", re.IGNORECASE)
_ANY_INT_LIST = re.compile(r"\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*,?\s*\]")
_REASONS = re.compile(r"reasons?\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
_INT = re.compile(r"-?\d+")


def _as_int(value: Any) -> int | None:
    # JSON booleans are ints in Python; a VLM writing `true` did not mean index 1.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in `text`: the whole text, fenced blocks, then objects embedded in prose."""
    found: list[dict[str, Any]] = []
    candidates = [text, *(match.group(1) for match in _FENCE.finditer(text))]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    decoder = json.JSONDecoder()
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        position = text.find("{", end)
    return found


def _from_json(value: dict[str, Any]) -> RawAnswer | None:
    ranked = value.get("ranked", value.get("ranked_list", value.get("ranking")))
    if not isinstance(ranked, list):
        return None
    indices = [i for i in (_as_int(item) for item in ranked) if i is not None]
    reasons = value.get("reasons", value.get("reason", value.get("explanation")))
    return RawAnswer(
        ranked=indices,
        best=_as_int(value.get("best")),
        reasons=reasons.strip() if isinstance(reasons, str) and reasons.strip() else None,
    )


def parse_answer(content: str) -> RawAnswer:
    """Read a ranking from JSON (bare, fenced or in prose) or from the tutorial's `Ranked list: [...] Reasons: ...`."""
    for value in _json_objects(content):
        answer = _from_json(value)
        if answer is not None:
            return answer
    match = _TUTORIAL_LIST.search(content) or _ANY_INT_LIST.search(content)
    if match is None:
        raise UnusableAnswer(NO_USABLE_RANKING)
    indices = [int(token) for token in _INT.findall(match.group(1))]
    reasons_match = _REASONS.search(content, match.end())
    reasons = reasons_match.group(1) if reasons_match else content[match.end() :]
    return RawAnswer(ranked=indices, best=None, reasons=reasons.strip() or None)


def validate(answer: RawAnswer, shown: int) -> Ranking:
    """A permutation of range(shown): duplicates dropped, unknown indices ignored, missing ones appended in order.

    The reasons explain `best`, so a valid `best` that is not first is moved to the front: the order's first
    item and the explanation then talk about the same candidate.
    """
    seen: dict[int, None] = {}
    for index in answer.ranked:
        if 0 <= index < shown:
            seen.setdefault(index, None)
    if not seen:
        raise UnusableAnswer(NO_USABLE_RANKING)
    order = list(seen)
    if answer.best is not None and 0 <= answer.best < shown and order[0] != answer.best:
        if answer.best in seen:
            order.remove(answer.best)
        order.insert(0, answer.best)
    order.extend(i for i in range(shown) if i not in seen and i != answer.best)
    return Ranking(order=order, reasons=answer.reasons)


def borda(orders: Sequence[Sequence[int]], count: int) -> list[int]:
    """Combine full orders of range(count) by Borda count; ties go to the earlier (vector) index."""
    points = [0] * count
    for order in orders:
        for position, index in enumerate(order):
            points[index] += count - 1 - position
    return sorted(range(count), key=lambda index: (-points[index], index))
