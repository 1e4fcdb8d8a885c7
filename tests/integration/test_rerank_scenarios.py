"""Every way a VLM can answer, through a real job: the search always succeeds, with the right rerank status and order.

The fake VLM (a real HTTP server) ranks the shown indices in reverse unless the scenario says otherwise. Each case
uses its own instruction, so the rerank cache never answers for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import TEST_LIMITS, Stack, png_bytes, wait_for_job

pytestmark = pytest.mark.integration

LIMIT = 4
REVERSED = [4, 3, 2, 1]
VECTOR_ORDER = [1, 2, 3, 4]
BUDGET_S = float(TEST_LIMITS["MMRAG_RERANK_BUDGET_S"])

# scenario, extra control fields, rerank status, final order as vector ranks, a phrase of the reason
SCENARIOS: list[tuple[str, dict[str, Any], str, list[int], str | None]] = [
    ("json", {}, "applied", REVERSED, None),
    ("text", {}, "applied", REVERSED, None),
    ("reject_schema", {}, "applied", REVERSED, None),
    ("rate_limit_then_ok", {}, "applied", REVERSED, None),
    # [3, 3, 10, -1, 0, 0] with best 3: duplicates and unknown indices go, 1 and 2 follow in vector order.
    ("dupes", {}, "applied", [4, 1, 2, 3], None),
    ("prose", {}, "failed", VECTOR_ORDER, "no usable ranking"),
    ("refusal", {}, "failed", VECTOR_ORDER, "refused"),
    ("error_500", {}, "failed", VECTOR_ORDER, "HTTP 500"),
    ("sleep", {"sleep_s": 30}, "failed", VECTOR_ORDER, "did not answer within"),
]


@pytest.fixture
def vlm_scenario(stack: Stack) -> Iterator[None]:
    yield
    with stack.vlm() as vlm:
        vlm.post("/control/reset")


@pytest.mark.parametrize(("scenario", "control", "status", "order", "reason"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_every_vlm_answer_ends_in_a_succeeded_search(
    stack: Stack,
    indexed: dict[str, bytes],
    vlm_scenario: None,
    scenario: str,
    control: dict[str, Any],
    status: str,
    order: list[int],
    reason: str | None,
) -> None:
    instruction = f"the same pattern on a phone case ({scenario})"
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        assert vlm.post("/control/scenario", json={"name": scenario, **control}).status_code == 200
    with stack.http() as http:
        response = http.post(
            "/v1/searches",
            files={"image": ("query.png", png_bytes((30, 120, 220), pattern=2), "image/png")},
            data={"instruction": instruction, "limit": str(LIMIT)},
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
        panorama = http.get(f"/v1/jobs/{job['id']}/panorama")

    assert job["status"] == "succeeded", (job, stack.logs())
    result: dict[str, Any] = job["result"]
    rerank = result["rerank"]
    assert rerank["status"] == status, rerank
    assert [c["vector_rank"] for c in result["candidates"]] == order
    assert [c["rank"] for c in result["candidates"]] == [1, 2, 3, 4]
    if status == "applied":
        assert rerank["best_id"] == result["candidates"][0]["id"]
        assert rerank["explanation"].startswith("fake-vlm")
        assert rerank["reason"] is None
    else:
        assert rerank["best_id"] is None
        assert reason is not None and reason in rerank["reason"], rerank
        if scenario == "error_500":  # the provider's own error text goes to the log, not to the client
            assert "fake-vlm" not in rerank["reason"], rerank
    # The job never waits on the VLM longer than its budget: 5 s of slack for the panorama, the bookkeeping and a
    # loaded machine, still far from the 30 s the sleeping VLM would take.
    timings: dict[str, float] = job["timings_ms"]
    assert timings["rerank"] < (BUDGET_S + 5) * 1000, timings
    assert panorama.status_code == 200 and panorama.headers["content-type"] == "image/jpeg"

    with stack.vlm() as vlm:
        requests = vlm.get("/control/requests").json()
    assert requests, "the VLM was never asked"
    for request in requests:
        assert request["model"] == "fake-vlm-1"
        assert any(instruction in text for text in request["texts"])
        assert request["image"]["jpeg"] and request["image"]["bytes"] == len(panorama.content)
