"""Remembering VLM rankings in Redis: the same query, instruction, candidates and model get the same answer.

A cache problem never fails a rerank: Redis errors are logged and the VLM is asked as if nothing was cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from services.reranker.prompt import PROMPT_VERSION

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "mmrag:rerank-cache:"


@dataclass(frozen=True)
class CachedRanking:
    order: list[int]  # indices into the candidates in vector order
    explanation: str | None


def cache_key(
    query_image: bytes | None, instruction: str | None, candidate_ids: Sequence[str], model: str, shuffle: bool
) -> str:
    """The Redis key for one question; candidate ids in the order they are shown (order changes the answer).
    `query_image` None: a text-only search (a different question from an empty or expired query image)."""
    material = json.dumps(
        {
            "prompt": PROMPT_VERSION,
            "query": hashlib.sha256(query_image).hexdigest() if query_image is not None else None,
            "instruction": (instruction or "").strip(),
            "candidates": list(candidate_ids),
            "model": model,
            "shuffle": shuffle,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()


def load(client: redis.Redis | None, key: str, count: int) -> CachedRanking | None:
    """The cached ranking, or None when absent, unreadable, or not a permutation of `count` candidates."""
    if client is None:
        return None
    try:
        raw = client.get(key)
    except Exception as error:  # any Redis failure just means a cache miss
        logger.warning("rerank cache unavailable (%s); asking the VLM", error)
        return None
    if raw is None:
        return None
    try:
        value: Any = json.loads(raw)
        order = [int(i) for i in value["order"]]
        explanation = value.get("explanation")
    except (ValueError, TypeError, KeyError):
        return None
    if sorted(order) != list(range(count)):
        return None
    return CachedRanking(order=order, explanation=explanation if isinstance(explanation, str) else None)


def store(client: redis.Redis | None, key: str, ranking: CachedRanking, ttl_s: int) -> None:
    if client is None or ttl_s <= 0:
        return
    payload = json.dumps({"order": ranking.order, "explanation": ranking.explanation})
    try:
        client.set(key, payload, ex=ttl_s)
    except Exception as error:  # a lost cache write costs one VLM call later, nothing more
        logger.warning("rerank cache write failed (%s)", error)
