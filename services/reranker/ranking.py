"""Turning a VLM's answer into a trustworthy order: parse it, validate it into a permutation, combine two answers.

Every index here is a 0-based position on the panorama that was shown (see prompt.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from services.reranker.prompt import MAX_REASONS_CHARS


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

# The whole reply, trimmed, may sit in one code fence (```json ... ```): the fence is dropped, nothing else is.
_FENCED = re.compile(r"```(?:json|JSON)?[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL)
# The tutorial's text form, from the reply's first character: `Ranked list: [...]`, then the reasons.
_TUTORIAL_FORM = re.compile(
    r"\**\s*ranked\s+list\s*:?\s*\**\s*\[([-\d,\s]*)\](?:\s*\**\s*reasons?\s*:\s*\**)?(.*)",
    re.IGNORECASE | re.DOTALL,
)
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


def _capped_reasons(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    return text if len(text) <= MAX_REASONS_CHARS else text[: MAX_REASONS_CHARS - 1] + "…"


def _whole_json_object(text: str) -> dict[str, Any] | None:
    """The reply as one JSON object, when it is exactly that (whitespace and one enclosing fence aside)."""
    fenced = _FENCED.fullmatch(text)
    candidate = fenced.group(1) if fenced else text
    try:
        value = json.loads(candidate)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _from_json(value: dict[str, Any]) -> RawAnswer | None:
    ranked = value.get("ranked", value.get("ranked_list", value.get("ranking")))
    if not isinstance(ranked, list):
        return None
    indices = [i for i in (_as_int(item) for item in ranked) if i is not None]
    reasons = value.get("reasons", value.get("reason", value.get("explanation")))
    return RawAnswer(ranked=indices, best=_as_int(value.get("best")), reasons=_capped_reasons(reasons))


def parse_answer(content: str) -> RawAnswer:
    """Read a reply that is entirely one JSON object (optionally in one ```json fence) or that is the tutorial's
    `Ranked list: [...] Reasons: ...` from its first line.

    Anything else is refused, even when it holds a ranking: an object or list quoted inside prose may be one the
    model copied from the item details (a poisoned title), not its own answer.
    """
    text = content.strip()
    value = _whole_json_object(text)
    if value is not None:
        answer = _from_json(value)
        if answer is None:
            raise UnusableAnswer(NO_USABLE_RANKING)
        return answer
    match = _TUTORIAL_FORM.fullmatch(text)
    if match is None:
        raise UnusableAnswer(NO_USABLE_RANKING)
    indices = [int(token) for token in _INT.findall(match.group(1))]
    return RawAnswer(ranked=indices, best=None, reasons=_capped_reasons(match.group(2)))


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
