"""Remembering VLM rankings in Redis: the same question (messages, picture, model) gets the same answer.

A cache problem never fails a rerank: Redis errors are logged and the VLM is asked as if nothing was cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from services.reranker.prompt import MAX_REASONS_CHARS, PROMPT_VERSION, Prompt

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "mmrag:rerank-cache:"


@dataclass(frozen=True)
class CachedRanking:
    order: list[int]  # indices into the candidates in vector order
    explanation: str | None


def cache_key(prompt: Prompt, panorama_jpeg: bytes, model: str, shuffle: bool) -> str:
    """The Redis key for one question: everything the VLM is sent (both messages, the item details within them, the
    picture with the query and the candidates in the order shown), the model, and whether it is asked twice.

    Any metadata fix changes the user message and so the key: a poisoned or stale answer cannot outlive it.
    """
    material = json.dumps(
        {
            "prompt_version": PROMPT_VERSION,
            "system": prompt.system,
            "user": prompt.user,
            "panorama": hashlib.sha256(panorama_jpeg).hexdigest(),
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
    if not isinstance(explanation, str):
        explanation = None
    elif len(explanation) > MAX_REASONS_CHARS:  # written before the cap existed
        explanation = explanation[: MAX_REASONS_CHARS - 1] + "…"
    return CachedRanking(order=order, explanation=explanation)


def store(client: redis.Redis | None, key: str, ranking: CachedRanking, ttl_s: int) -> None:
    if client is None or ttl_s <= 0:
        return
    payload = json.dumps({"order": ranking.order, "explanation": ranking.explanation})
    try:
        client.set(key, payload, ex=ttl_s)
    except Exception as error:  # a lost cache write costs one VLM call later, nothing more
        logger.warning("rerank cache write failed (%s)", error)
