"""The reranker's entry point against the fake VLM over real HTTP, with the real openai client.

Each scenario ends in a definite outcome: applied in the VLM's order, or failed in vector order with a reason,
always within the budget. The fake ranks the shown indices in reverse unless a scenario says otherwise.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common.settings import Settings
from services.reranker import cache, panorama
from services.reranker.prompt import build_prompt
from services.reranker.ranking import borda
from services.reranker.rerank import RerankCandidate, RerankOutcome, rerank
from tests.support.fake_vlm import FakeVLM
from tests.support.processes import refused_port
from tests.support.prompts import items_of

COUNT = 6
REVERSED = list(reversed(range(COUNT)))
VECTOR = list(range(COUNT))
INSTRUCTION = "phone case with this image theme"


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _candidates(count: int = COUNT) -> list[RerankCandidate]:
    return [
        RerankCandidate(
            id=f"{i:064x}", image=_jpeg((40 * i % 256, 90, 160)), metadata={"title": f"item {i}", "category": "cases"}
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVLM]:
    with FakeVLM() as server:
        yield server


@pytest.fixture
def vlm(fake: FakeVLM) -> FakeVLM:
    fake.reset()
    return fake


def _settings(vlm: FakeVLM, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": "test-key",
        "llm_base_url": vlm.base_url,
        "llm_model": "fake-vlm-1",
        "llm_timeout_s": 1.0,
        "rerank_budget_s": 3.0,
        **overrides,
    }
    return Settings(**values)


def _rerank(vlm: FakeVLM, **overrides: Any) -> RerankOutcome:
    return rerank(
        _jpeg((200, 40, 40)), INSTRUCTION, _candidates(), settings=_settings(vlm, **overrides), redis=None, seed="job-1"
    )


def _requests(vlm: FakeVLM) -> list[dict[str, Any]]:
    """The fake's record, read over HTTP like any other client would."""
    response = httpx.get(f"{vlm.control_url}/requests")
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


def test_json_answer_is_applied_in_the_vlms_order(vlm: FakeVLM) -> None:
    httpx.post(f"{vlm.control_url}/scenario", json={"name": "json", "expect_instruction": INSTRUCTION})
    outcome = _rerank(vlm)
    assert outcome.status == "applied" and outcome.reason is None
    assert outcome.order == REVERSED
    assert outcome.explanation == f"fake-vlm: item {COUNT - 1} fits the instruction best"
    assert outcome.model == "fake-vlm-1" and not outcome.cached and outcome.vlm_ms > 0
    [request] = _requests(vlm)
    assert request["model"] == "fake-vlm-1"
    assert request["response_format"] == "json_schema"
    assert request["image"]["jpeg"] and (request["image"]["width"], request["image"]["height"]) == (1024, 512)
    assert request["shown"] == VECTOR
    system, user = request["texts"]
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user"]
    assert "Composed Image Retrieval" in system and INSTRUCTION not in system and "item 3" not in system
    assert INSTRUCTION in user and {"index": 3, "title": "item 3", "category": "cases"} in items_of(user)
    assert outcome.panorama_jpeg is not None and outcome.panorama_jpeg.startswith(b"\xff\xd8")


def test_a_text_only_search_is_ranked_from_the_instruction_and_the_candidates_alone(vlm: FakeVLM) -> None:
    text = "a red phone case"
    outcome = rerank(None, text, _candidates(), settings=_settings(vlm), redis=None, seed="job-t")
    assert (outcome.status, outcome.order) == ("applied", REVERSED)
    [request] = _requests(vlm)
    assert request["shown"] == VECTOR
    prompt = " ".join(request["texts"])
    assert f'User instruction: "{text}"' in prompt and "there is no query image" in prompt.lower()
    assert "blue border" not in prompt
    # The panorama sent is the candidate grid alone, with no query column.
    layout = panorama.plan(COUNT, show_query=False)
    assert (request["image"]["width"], request["image"]["height"]) == (layout.width, layout.height)
    assert outcome.panorama_jpeg is not None
    # Not the same question as a search whose query image is gone (drawn as a placeholder): cached apart.
    metadata = [c.metadata for c in _candidates()]
    text_only = build_prompt(text, metadata, query_image=False)
    image_gone = build_prompt(text, metadata, query_image=True)
    jpeg = outcome.panorama_jpeg
    assert cache.cache_key(text_only, jpeg, "m", False) != cache.cache_key(image_gone, jpeg, "m", False)


def test_tutorial_text_answer_is_applied(vlm: FakeVLM) -> None:
    vlm.scenario("text")
    outcome = _rerank(vlm)
    assert (outcome.status, outcome.order) == ("applied", REVERSED)
    assert outcome.explanation is not None and outcome.explanation.startswith("fake-vlm")


@pytest.mark.parametrize("scenario", ["prose", "quoted"])
def test_prose_without_a_ranking_of_its_own_fails_in_vector_order(vlm: FakeVLM, scenario: str) -> None:
    vlm.scenario(scenario)  # "quoted": a ranking quoted inside prose is not the model's answer
    outcome = _rerank(vlm)
    assert (outcome.status, outcome.order) == ("failed", VECTOR)
    assert outcome.reason == "VLM answered no usable ranking" and outcome.explanation is None


def test_duplicate_and_out_of_range_indices_are_cleaned_up(vlm: FakeVLM) -> None:
    vlm.scenario("dupes")
    outcome = _rerank(vlm)
    assert outcome.status == "applied"
    assert outcome.order == [COUNT - 1, 0, *range(1, COUNT - 1)]


def test_rate_limit_is_retried_after_retry_after(vlm: FakeVLM) -> None:
    vlm.scenario("rate_limit_then_ok")
    outcome = _rerank(vlm)
    assert (outcome.status, outcome.order) == ("applied", REVERSED)
    assert len(_requests(vlm)) == 2


# Time bounds below leave 3 s of slack for a loaded 2-core machine: each is still far from what the call would
# take without the deadline (the fake's 30 s sleep, or the 3.5 s of back-off of all retries).
SLACK_S = 3.0


def test_server_errors_fail_in_vector_order_within_budget(vlm: FakeVLM) -> None:
    vlm.scenario("error_500")
    started = time.monotonic()
    outcome = _rerank(vlm, rerank_budget_s=1.0)
    elapsed = time.monotonic() - started
    assert (outcome.status, outcome.order) == ("failed", VECTOR)
    # The status, not the provider's words (they go to the log): a client reads this reason.
    assert outcome.reason is not None and "HTTP 500" in outcome.reason and "fake-vlm" not in outcome.reason
    assert len(_requests(vlm)) >= 2  # retried with back-off before giving up
    # The budget, not the retry limit, ended it: all retries would need over 1.75 s of back-off alone.
    assert "budget" in outcome.reason, outcome.reason
    assert elapsed < 1.0 + SLACK_S


def test_a_vlm_slower_than_the_budget_fails_within_the_budget(vlm: FakeVLM) -> None:
    vlm.scenario("sleep", sleep_s=30)
    started = time.monotonic()
    outcome = _rerank(vlm, llm_timeout_s=0.8, rerank_budget_s=2.0)
    elapsed = time.monotonic() - started
    assert (outcome.status, outcome.order) == ("failed", VECTOR)
    assert outcome.reason is not None and "did not answer within" in outcome.reason
    assert 0.8 <= elapsed < 2.0 + SLACK_S, elapsed
    assert outcome.vlm_ms <= (2.0 + SLACK_S) * 1000


def test_an_explicit_deadline_wins_over_the_budget(vlm: FakeVLM) -> None:
    vlm.scenario("sleep", sleep_s=30)
    started = time.monotonic()
    outcome = rerank(
        _jpeg((1, 2, 3)),
        INSTRUCTION,
        _candidates(),
        settings=_settings(vlm, llm_timeout_s=30.0, rerank_budget_s=60.0),
        redis=None,
        seed="job-1",
        deadline=started + 1.0,
    )
    assert outcome.status == "failed"
    assert time.monotonic() - started < 1.0 + SLACK_S


def test_a_slow_but_timely_vlm_is_waited_for(vlm: FakeVLM) -> None:
    vlm.scenario("sleep", sleep_s=0.3)
    outcome = _rerank(vlm)
    assert (outcome.status, outcome.order) == ("applied", REVERSED)
    assert outcome.vlm_ms >= 300


def test_refusal_fails_with_the_refusal_as_reason(vlm: FakeVLM) -> None:
    vlm.scenario("refusal")
    outcome = _rerank(vlm)
    assert (outcome.status, outcome.order) == ("failed", VECTOR)
    assert outcome.reason == "the VLM refused: fake-vlm: I can't help with that request."


def test_a_server_rejecting_json_schema_is_asked_once_more_in_plain_text(vlm: FakeVLM) -> None:
    vlm.scenario("reject_schema")
    outcome = _rerank(vlm)
    assert (outcome.status, outcome.order) == ("applied", REVERSED)
    assert [r["response_format"] for r in _requests(vlm)] == ["json_schema", None]


def test_an_unreachable_vlm_fails_within_budget() -> None:
    with refused_port() as port:
        settings = Settings(
            openai_api_key=None,
            llm_base_url=f"http://127.0.0.1:{port}/v1",
            llm_model="m",
            llm_timeout_s=0.5,
            rerank_budget_s=1.0,
        )
        started = time.monotonic()
        outcome = rerank(_jpeg((0, 0, 0)), None, _candidates(), settings=settings, redis=None, seed="s")
    assert (outcome.status, outcome.order) == ("failed", VECTOR)
    assert outcome.reason is not None and "unreachable" in outcome.reason
    assert "budget" in outcome.reason, outcome.reason  # cut by the budget, not after all retries
    assert time.monotonic() - started < 1.0 + SLACK_S


def test_no_vlm_configured_skips_but_still_builds_the_panorama() -> None:
    settings = Settings(openai_api_key=None, llm_base_url=None)
    outcome = rerank(_jpeg((0, 0, 0)), INSTRUCTION, _candidates(), settings=settings, redis=None, seed="s")
    assert (outcome.status, outcome.order, outcome.model) == ("skipped", VECTOR, None)
    assert outcome.reason is not None and "no VLM configured" in outcome.reason
    assert outcome.panorama_jpeg is not None and outcome.panorama_jpeg.startswith(b"\xff\xd8")


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_candidates_are_skipped(vlm: FakeVLM, count: int) -> None:
    outcome = rerank(_jpeg((0, 0, 0)), INSTRUCTION, _candidates(count), settings=_settings(vlm), redis=None, seed="s")
    assert (outcome.status, outcome.order) == ("skipped", list(range(count)))
    assert outcome.reason
    assert (outcome.panorama_jpeg is not None) == (count == 1)
    assert _requests(vlm) == []


def test_missing_and_undecodable_candidates_are_still_ranked(vlm: FakeVLM) -> None:
    candidates = _candidates()
    candidates[1] = RerankCandidate(id="a" * 64, image=None, metadata={})
    candidates[2] = RerankCandidate(id="b" * 64, image=b"not an image", metadata={"title": "broken"})
    outcome = rerank(_jpeg((0, 0, 0)), None, candidates, settings=_settings(vlm), redis=None, seed="s")
    assert (outcome.status, outcome.order) == ("applied", REVERSED)
    [request] = _requests(vlm)
    items = items_of(request["texts"][1])
    assert items[1] == {"index": 1, "image_unavailable": True}
    assert items[2] == {"index": 2, "title": "broken", "image_unavailable": True}


# The cache lives in the session's private redis-server (tests/conftest.py), emptied before each test.


def test_a_cached_answer_is_reused_without_asking_the_vlm(vlm: FakeVLM, redis_client: redis.Redis) -> None:
    query = _jpeg((7, 7, 7))
    settings = _settings(vlm, rerank_cache_ttl_s=60)
    first = rerank(query, INSTRUCTION, _candidates(), settings=settings, redis=redis_client, seed="a")
    second = rerank(query, INSTRUCTION, _candidates(), settings=settings, redis=redis_client, seed="b")
    assert (first.status, first.cached) == ("applied", False)
    assert (second.status, second.cached, second.vlm_ms) == ("applied", True, 0.0)
    assert second.order == first.order == REVERSED and second.explanation == first.explanation
    assert second.panorama_jpeg is not None
    assert len(_requests(vlm)) == 1
    [key] = redis_client.keys(cache.KEY_PREFIX + "*")
    assert 0 < redis_client.ttl(key) <= 60

    other_instruction = rerank(query, "in green", _candidates(), settings=settings, redis=redis_client, seed="a")
    assert not other_instruction.cached and len(_requests(vlm)) == 2


def test_a_metadata_fix_is_not_answered_from_the_cache(vlm: FakeVLM, redis_client: redis.Redis) -> None:
    """The key covers the item details: once a poisoned title is fixed, the answer given to it is not reused."""
    query = _jpeg((9, 9, 9))
    settings = _settings(vlm, rerank_cache_ttl_s=60)
    poisoned = _candidates()
    poisoned[1] = RerankCandidate(id=poisoned[1].id, image=poisoned[1].image, metadata={"title": "IMPORTANT: …"})
    assert not rerank(query, None, poisoned, settings=settings, redis=redis_client, seed="a").cached
    assert rerank(query, None, poisoned, settings=settings, redis=redis_client, seed="a").cached
    fixed = rerank(query, None, _candidates(), settings=settings, redis=redis_client, seed="a")
    assert not fixed.cached and len(_requests(vlm)) == 2


def test_failures_are_not_cached(vlm: FakeVLM, redis_client: redis.Redis) -> None:
    query = _jpeg((8, 8, 8))
    vlm.scenario("prose")
    settings = _settings(vlm, rerank_cache_ttl_s=60)
    assert rerank(query, None, _candidates(), settings=settings, redis=redis_client, seed="a").status == "failed"
    vlm.scenario("json")
    assert rerank(query, None, _candidates(), settings=settings, redis=redis_client, seed="a").status == "applied"
    assert len(_requests(vlm)) == 2


def test_a_broken_redis_is_a_cache_miss(vlm: FakeVLM) -> None:
    with refused_port() as port:
        # No client-side retries: redis-py's default back-off would spend the test's whole VLM budget.
        dead = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        outcome = rerank(_jpeg((0, 0, 0)), None, _candidates(), settings=_settings(vlm), redis=dead, seed="s")
    assert (outcome.status, outcome.order, outcome.cached) == ("applied", REVERSED, False), outcome.reason


def _shown_candidates(request: dict[str, Any]) -> list[int]:
    """Which candidate sat at each panorama position, read back from the titles ("item k") in the item details."""
    return [int(item["title"].removeprefix("item ")) for item in items_of(request["texts"][1])]


def test_shuffle_asks_twice_and_combines_by_borda_reproducibly(vlm: FakeVLM) -> None:
    settings = _settings(vlm, rerank_shuffle=True)
    first = rerank(_jpeg((5, 5, 5)), INSTRUCTION, _candidates(), settings=settings, redis=None, seed="job-42")
    requests = _requests(vlm)
    vlm.reset()
    again = rerank(_jpeg((5, 5, 5)), INSTRUCTION, _candidates(), settings=settings, redis=None, seed="job-42")
    assert first.status == again.status == "applied"
    assert first.order == again.order and first.explanation == again.explanation
    assert sorted(_shown_candidates(r) for r in _requests(vlm)) == sorted(_shown_candidates(r) for r in requests)

    # One view in vector order, one shuffled; the fake answers each with its positions reversed.
    views = sorted((_shown_candidates(r) for r in requests), key=lambda shown: shown != VECTOR)
    assert views[0] == VECTOR and views[1] != VECTOR and sorted(views[1]) == VECTOR
    answers = [list(reversed(shown)) for shown in views]
    assert first.order == borda(answers, COUNT)
    best = first.order[0]
    explained_by = [answer[0] for answer in answers]
    if best in explained_by:
        assert (
            first.explanation
            == f"fake-vlm: item {views[explained_by.index(best)].index(best)} fits the instruction best"
        )
    else:
        assert first.explanation is None


def test_shuffle_with_another_seed_shows_another_order(vlm: FakeVLM) -> None:
    settings = _settings(vlm, rerank_shuffle=True)
    shuffled_views = set()
    for seed in ("seed-a", "seed-b", "seed-c"):
        vlm.reset()
        rerank(_jpeg((5, 5, 5)), INSTRUCTION, _candidates(), settings=settings, redis=None, seed=seed)
        shuffled_views |= {tuple(_shown_candidates(r)) for r in _requests(vlm)} - {tuple(VECTOR)}
    assert len(shuffled_views) > 1


def test_the_combined_best_is_explained_by_the_answer_that_put_it_first() -> None:
    from services.reranker.ranking import Ranking
    from services.reranker.rerank import _combine

    first, second = Ranking([0, 1, 2], "first says 0"), Ranking([2, 0, 1], "second says 2")
    assert _combine(first, second, 3) == ([0, 2, 1], "first says 0")
    first, second = Ranking([1, 0, 2, 3], "first says 1"), Ranking([0, 2, 3, 1], "second says 0")
    assert _combine(first, second, 4) == ([0, 1, 2, 3], "second says 0")
    # Neither answer put the Borda winner first: no explanation rather than one about another item.
    first, second = Ranking([0, 1, 2, 3], "a"), Ranking([3, 1, 2, 0], "b")
    assert _combine(first, second, 4) == ([1, 0, 3, 2], None)
