"""The text sent with the panorama: the tutorial's ranking instruction, the candidates' metadata, the answer schema.

Indices are 0-based, as in the tutorial: the label drawn on a tile, the number in the prompt and the number the VLM
answers with are all the tile's position in the panorama (0 = top-left candidate, row by row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

# Bumped whenever the prompt or schema changes meaning, so cached answers to an older prompt are not reused.
PROMPT_VERSION: Final = "2"

# Metadata fields worth the VLM's attention; anything else (ids, prices, URLs) is noise for a visual ranking.
_METADATA_FIELDS: Final = ("title", "category")
# A pathological title must not crowd the instruction out of the context window.
_MAX_FIELD_CHARS: Final = 200

RANKING_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "ranked": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "Every valid index exactly once, from most to least suitable.",
        },
        "best": {"type": "integer", "description": "The most suitable index: the first of `ranked`."},
        "reasons": {"type": "string", "description": "Why the best item fits the user's intent."},
    },
    "required": ["ranked", "best", "reasons"],
    "additionalProperties": False,
}

RESPONSE_FORMAT: Final[dict[str, Any]] = {
    "type": "json_schema",
    "json_schema": {"name": "rerank_answer", "strict": True, "schema": RANKING_SCHEMA},
}

_INTRODUCTION: Final = (
    "You are responsible for ranking results for a Composed Image Retrieval. "
    "The user retrieves an image with an 'instruction' indicating their retrieval intent. "
    "For example, if the user queries a red car with the instruction 'change this car to blue', "
    "a similar type of car in blue would be ranked higher in the results. "
    "Now you receive the instruction and the query image, which has a blue border and the word 'query' under it, "
    "on the left of the picture. Every other item has its red index number on a white plate in its top left. "
    "Do not misunderstand it."
)
# A text-only search: no query image on the panorama, the instruction is the whole query.
_TEXT_ONLY_INTRODUCTION: Final = (
    "You are responsible for ranking image search results. "
    "The user searched with a text 'instruction' only: there is no query image. "
    "Every item has its red index number on a white plate in its top left. "
    "Do not misunderstand it."
)


def _clean(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_FIELD_CHARS else text[: _MAX_FIELD_CHARS - 1] + "…"


def _describe(metadata: Mapping[str, Any]) -> str:
    return "; ".join(f"{field}: {_clean(metadata[field])}" for field in _METADATA_FIELDS if metadata.get(field))


def build_prompt(
    instruction: str | None,
    metadata: Sequence[Mapping[str, Any]],
    unavailable: Sequence[int] = (),
    *,
    query_image: bool = True,
) -> str:
    """The prompt for one panorama; `metadata[i]` and `unavailable` use the indices shown on that panorama.
    `query_image=False`: a text-only search, whose panorama shows the candidates alone."""
    count = len(metadata)
    lines = [_INTRODUCTION if query_image else _TEXT_ONLY_INTRODUCTION, ""]
    if instruction and instruction.strip():
        lines.append(f"User instruction: {instruction.strip()}")
    else:
        lines.append("User instruction: (none given) rank the items by how well they match the query image.")
    lines.append("")
    details = [(i, _describe(m)) for i, m in enumerate(metadata)]
    missing = set(unavailable)
    if any(text for _, text in details) or missing:
        lines.append("Item details:")
        for i, text in details:
            parts = [text] if text else []
            if i in missing:
                parts.append("(image unavailable)")
            if parts:
                lines.append(f"{i}. {' '.join(parts)}")
        lines.append("")
    # Stating the indices explicitly stops a VLM from inventing or skipping some (and lets a test double read them).
    lines.append(f"Valid indices: {', '.join(str(i) for i in range(count))}")
    lines.append(
        "Rank every valid index from most suitable to least suitable, each exactly once, and explain why the "
        "top 1 most suitable item fits the user's query intent. Answer with a JSON object only: "
        '{"ranked": [indices as integers], "best": <the first index of ranked>, "reasons": "<explanation>"}.'
    )
    return "\n".join(lines)
