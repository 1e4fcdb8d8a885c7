"""JSON from clients (filters, metadata, bodies): bounded nesting and text that can be stored.

Two inputs used to get a 500 with a traceback, and the first one left an upload's files orphaned on disk:
- deep nesting: `json.loads` raises RecursionError near depth 1000, and a depth that still parses (900) fails
  later, when the value is serialised for Redis, the sidecar file or Milvus;
- a lone surrogate (`"\\ud800"` is valid JSON): Python keeps it in a str that cannot be encoded as UTF-8, so
  the first write to Redis or to disk raises UnicodeEncodeError.
`loads_checked` and `json_problem` refuse both before anything is stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Deeper than any metadata or filter needs (a filter is flat; metadata rarely nests more than two levels), and far
# below the depth at which the parser or a serialiser runs out of stack.
MAX_JSON_DEPTH = 32
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class JsonLimitError(ValueError):
    """The JSON is not acceptable; the message says what to fix."""


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a parsed JSON value cannot be stored (too deep, or a string that is not valid Unicode), or None.

    Iterative, so that it needs no stack however deep the value; it stops at the first problem.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, dict | list):
            if depth > max_depth:
                return f"nested more than {max_depth} levels deep"
            children = current.items() if isinstance(current, dict) else enumerate(current)
            for key, child in children:
                if isinstance(key, str) and _SURROGATE.search(key):
                    return "a key is not valid Unicode (it holds a lone surrogate escape such as \\ud800)"
                pending.append((child, depth + 1))
        elif isinstance(current, str) and _SURROGATE.search(current):
            return "a string is not valid Unicode (it holds a lone surrogate escape such as \\ud800)"
    return None


def loads_checked(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads`, refusing (JsonLimitError) malformed JSON, nesting past `max_depth` and lone surrogates."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise JsonLimitError(f"not JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise JsonLimitError("not UTF-8 text") from None
    except RecursionError:
        raise JsonLimitError(f"nested more than {max_depth} levels deep") from None
    problem = json_problem(value, max_depth)
    if problem is not None:
        raise JsonLimitError(problem)
    return value
