"""The reranker's entry point: candidates in vector order → panorama → VLM → final order, never raising for the VLM.

Indices shown on the panorama and used in the prompt are 0-based positions on that panorama (as in the tutorial);
`RerankOutcome.order` is always expressed in indices of `candidates` as passed in (vector order).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from services.common.settings import Settings
from services.reranker import cache, panorama, vlm
from services.reranker.prompt import Prompt, build_prompt
from services.reranker.ranking import Ranking, UnusableAnswer, borda, parse_answer, validate

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankCandidate:
    id: str  # sha256 of the image
    image: bytes | None  # encoded image file bytes; None or undecodable → labelled placeholder tile
    metadata: Mapping[str, Any]  # e.g. {"title": ..., "category": ...}; may be empty


@dataclass(frozen=True)
class RerankOutcome:
    status: Literal["applied", "skipped", "failed"]
    order: list[int]  # a permutation of range(len(candidates)): final order (vector order unless applied)
    explanation: str | None  # the VLM's reasons for the best, kept as written
    reason: str | None  # why skipped / failed (human readable), None when applied
    model: str | None
    panorama_jpeg: bytes | None  # the JPEG sent (or that would have been sent) to the VLM
    vlm_ms: float  # wall time spent waiting for the VLM (0 when not asked or cached)
    cached: bool


@dataclass(frozen=True)
class _View:
    """One way of showing the candidates: `shown[p]` is the candidate index drawn at panorama position p."""

    shown: list[int]
    jpeg: bytes
    prompt: Prompt


def _view(
    query_image: bytes | None, instruction: str | None, candidates: Sequence[RerankCandidate], shown: list[int]
) -> _View:
    text_only = query_image is None
    picture = panorama.build(query_image, [candidates[i].image for i in shown], show_query=not text_only)
    metadata = [candidates[i].metadata for i in shown]
    prompt = build_prompt(instruction, metadata, picture.placeholders, query_image=not text_only)
    return _View(shown=shown, jpeg=picture.jpeg, prompt=prompt)


def _ask(view: _View, settings: Settings, deadline: float) -> Ranking:
    """The VLM's ranking of one view, in candidate indices; VlmError or UnusableAnswer when there is none."""
    reply = vlm.ask(view.prompt, view.jpeg, settings=settings, deadline=deadline)
    ranking = validate(parse_answer(reply.content), len(view.shown))
    return Ranking(order=[view.shown[p] for p in ranking.order], reasons=ranking.reasons)


def _second_view_order(count: int, seed: str) -> list[int]:
    shown = list(range(count))
    random.Random(seed).shuffle(shown)
    if shown == sorted(shown):
        # The same order again would ask the same question twice and cancel nothing out.
        shown = shown[1:] + shown[:1]
    return shown


def _combine(first: Ranking, second: Ranking, count: int) -> tuple[list[int], str | None]:
    """Borda count of both answers; the explanation comes from an answer that put the combined best first."""
    order = borda([first.order, second.order], count)
    best = order[0]
    if first.order[0] == best:
        return order, first.reasons
    if second.order[0] == best:
        return order, second.reasons
    return order, None


def rerank(
    query_image: bytes | None,
    instruction: str | None,
    candidates: Sequence[RerankCandidate],
    *,
    settings: Settings,
    redis: redis.Redis | None,
    seed: str,
    deadline: float | None = None,
) -> RerankOutcome:
    """Rerank `candidates` (in vector order) with the VLM, finishing before `deadline` (time.monotonic()).

    `query_image` None: a text-only search; the VLM sees the candidates alone and the instruction as the query.
    Empty or undecodable bytes: a query image that is gone, drawn as a placeholder."""
    deadline = deadline if deadline is not None else time.monotonic() + settings.rerank_budget_s
    count = len(candidates)
    vector_order = list(range(count))

    def outcome(
        status: Literal["applied", "skipped", "failed"],
        *,
        jpeg: bytes | None,
        order: list[int] | None = None,
        explanation: str | None = None,
        reason: str | None = None,
        vlm_ms: float = 0.0,
        cached: bool = False,
    ) -> RerankOutcome:
        return RerankOutcome(
            status=status,
            order=order if order is not None else vector_order,
            explanation=explanation,
            reason=reason,
            model=settings.llm_model if status != "skipped" else None,
            panorama_jpeg=jpeg,
            vlm_ms=vlm_ms,
            cached=cached,
        )

    if count == 0:
        return outcome("skipped", jpeg=None, reason="no candidates to rerank")
    first_view = _view(query_image, instruction, candidates, vector_order)
    if count == 1:
        return outcome("skipped", jpeg=first_view.jpeg, reason="only one candidate: nothing to reorder")
    if not settings.vlm_configured:
        return outcome(
            "skipped", jpeg=first_view.jpeg, reason="no VLM configured (set OPENAI_API_KEY or MMRAG_LLM_BASE_URL)"
        )

    key = cache.cache_key(first_view.prompt, first_view.jpeg, settings.llm_model, settings.rerank_shuffle)
    hit = cache.load(redis, key, count)
    if hit is not None:
        return outcome("applied", jpeg=first_view.jpeg, order=hit.order, explanation=hit.explanation, cached=True)

    started = time.monotonic()
    try:
        if settings.rerank_shuffle:
            order, explanation, complete = _ask_twice(
                query_image, instruction, candidates, first_view, settings, deadline, seed
            )
        else:
            answer = _ask(first_view, settings, deadline)
            order, explanation, complete = answer.order, answer.reasons, True
    except (vlm.VlmError, UnusableAnswer) as error:
        vlm_ms = (time.monotonic() - started) * 1000
        return outcome("failed", jpeg=first_view.jpeg, reason=str(error), vlm_ms=vlm_ms)
    vlm_ms = (time.monotonic() - started) * 1000
    if complete:
        # Half an answer (one of two shuffled asks failed) is served but not remembered as the full answer.
        cache.store(redis, key, cache.CachedRanking(order=order, explanation=explanation), settings.rerank_cache_ttl_s)
    return outcome("applied", jpeg=first_view.jpeg, order=order, explanation=explanation, vlm_ms=vlm_ms)


def _ask_twice(
    query_image: bytes | None,
    instruction: str | None,
    candidates: Sequence[RerankCandidate],
    first_view: _View,
    settings: Settings,
    deadline: float,
    seed: str,
) -> tuple[list[int], str | None, bool]:
    """Counter position bias: ask about the vector order and a seeded shuffle at once, combine by Borda count.

    Both questions run concurrently under the same deadline, so the shuffle costs tokens, not latency. If only
    one answer is usable it is used alone (complete=False); if neither is, the first one's problem is raised.
    """
    second_view = _view(query_image, instruction, candidates, _second_view_order(len(candidates), seed))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rerank-ask") as pool:
        futures = [pool.submit(_ask, view, settings, deadline) for view in (first_view, second_view)]
        results: list[Ranking | Exception] = []
        for future in futures:
            try:
                results.append(future.result())
            except (vlm.VlmError, UnusableAnswer) as error:
                results.append(error)
    first, second = results
    if isinstance(first, Ranking) and isinstance(second, Ranking):
        return (*_combine(first, second, len(candidates)), True)
    for result in results:
        if isinstance(result, Ranking):
            logger.warning("one of the two shuffled VLM answers failed; using the other alone")
            return result.order, result.reasons, False
    assert isinstance(first, Exception)
    raise first
