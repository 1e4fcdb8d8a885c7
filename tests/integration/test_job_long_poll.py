"""GET /v1/jobs/{id}?wait=N&since=T: a job changed since T (the client's last answer) comes back at once."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Stack, png_bytes, wait_for_job
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration


def test_a_change_the_client_has_not_seen_is_returned_without_waiting(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.vlm() as vlm, stack.http() as http:
        vlm.post("/control/reset")
        # The VLM holds the job in its reranking stage (below the stack's VLM timeout, so it still succeeds).
        vlm.post("/control/scenario", json={"name": "sleep", "sleep_s": 2.5})
        try:
            created = http.post(
                "/v1/searches", files={"image": ("q.png", png_bytes((10, 200, 30)), "image/png")}
            ).json()
            wait_until(lambda: len(vlm.get("/control/requests").json()) > 0, 30, "the VLM to be asked")
            # Changed since `created`: answered now, mid-rerank, not when the job next changes (its end).
            seen = http.get(f"/v1/jobs/{created['id']}", params={"wait": 30, "since": created["updated_at"]}).json()
            assert (seen["status"], seen["stage"]) == ("running", "reranking")
            # Unchanged since `seen`: waits for the next change.
            after = http.get(f"/v1/jobs/{created['id']}", params={"wait": 30, "since": seen["updated_at"]}).json()
            assert after["updated_at"] != seen["updated_at"]
            assert wait_for_job(http, created["id"])["status"] == "succeeded"
            bad = http.get(f"/v1/jobs/{created['id']}", params={"since": "yesterday"})
            assert bad.status_code == 400 and bad.json()["type"] == "invalid-request"
        finally:
            vlm.post("/control/reset")
