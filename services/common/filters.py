"""Metadata filters (`filter` in a search): which keys and values can be turned into a Milvus expression.

The gateway refuses anything else before queueing; the embedder checks again before building the expression.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from services.common.json_limits import json_problem

FilterValue = str | int | float | bool
MAX_KEY_CHARS = 64
# Milvus string literals accept the escapes for quotes, backslash, tab, newline and carriage return; any
# other control character would need a \u escape, which its parser refuses.
_UNESCAPABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def filter_problem(equalities: Mapping[str, FilterValue]) -> str | None:
    """Why these equalities cannot be a filter (what to fix), or None when they can."""
    for key, value in equalities.items():
        if not key.replace("_", "").isalnum() or len(key) > MAX_KEY_CHARS:
            return f"metadata key {key[:80]!r} must be 1–{MAX_KEY_CHARS} letters, digits or underscores"
        if isinstance(value, float) and not math.isfinite(value):
            return f"the value of {key!r} must be a finite number"
        if isinstance(value, str) and _UNESCAPABLE.search(value):
            return f"the value of {key!r} contains a control character: only tab, newline and CR are allowed"
        if isinstance(value, str) and json_problem(value) is not None:
            return f"the value of {key!r} is not valid Unicode (a lone surrogate escape such as \\ud800)"
    return None
