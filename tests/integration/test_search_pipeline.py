"""One search travels gateway → Redis → embedder → reranker (fake VLM over HTTP) and is polled back; index jobs
report their progress; jobs are canceled, long-polled and deduplicated as the README promises."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
from PIL import Image

from services.common.queues import TaskName
from tests.integration.conftest import CHUNK_SIZE, Stack, png_bytes, sha256_id, wait_for_job
from tests.support.processes import wait_until
from tests.support.tasks import task_ids, unfinished

pytestmark = pytest.mark.integration


@pytest.fixture
def vlm_control(stack: Stack) -> Iterator[httpx.Client]:
    """The fake VLM's control API, reset before and after the test, with no request of an earlier test in flight."""
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        wait_until(lambda: vlm.get("/control/concurrency").json()["in_flight"] == 0, 60, "earlier VLM requests")
        yield vlm
        vlm.post("/control/reset")


def _post_search(http: httpx.Client, instruction: str, **fields: str) -> dict[str, Any]:
    response = http.post(
        "/v1/searches",
        files={"image": ("q.png", png_bytes((10, 200, 10), pattern=3), "image/png")},
        data={"instruction": instruction, **fields},
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def _asked(vlm: httpx.Client, instruction: str) -> int:
    """How many chat requests the fake VLM got for searches with `instruction`."""
    return sum(any(instruction in text for text in r["texts"]) for r in vlm.get("/control/requests").json())


def test_an_index_job_reports_its_progress_chunk_by_chunk(stack: Stack) -> None:
    images = [(f"p_{i:03d}.png", png_bytes((i, 2 * i % 256, 99), pattern=i % 6)) for i in range(4 * CHUNK_SIZE)]
    states = []
    with stack.http() as http:
        response = http.post(
            "/v1/collections/progress/images", files=[("files", (n, d, "image/png")) for n, d in images]
        )
        assert response.status_code == 202, response.text
        job = response.json()
        states.append(job)
        deadline = time.monotonic() + 90
        while job["status"] not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
            job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()  # every change, as it happens
            states.append(job)
        info = http.get("/v1/collections/progress").json()
        listed = http.get("/v1/collections").json()

    assert job["status"] == "succeeded", (job, stack.logs())
    done = [state["progress"]["done"] for state in states]
    assert {state["progress"]["total"] for state in states} == {len(images)}
    assert done == sorted(done), done
    assert set(done) <= {0, CHUNK_SIZE, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE, 4 * CHUNK_SIZE}, done  # a chunk at a time
    assert any(0 < state["progress"]["done"] < len(images) and state["status"] == "running" for state in states), done
    assert done[-1] == len(images) and job["result"]["indexed"] == len(images)
    assert (info["count"], info["model"], info["metric"]) == (len(images), "tiny-random", "COSINE")
    assert info in listed


def test_the_indexed_collection_is_registered(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.http() as http:
        info = http.get("/v1/collections/default").json()
        listed = http.get("/v1/collections").json()
    assert info["count"] == len(indexed)
    assert info["model"] == "tiny-random"
    assert info["metric"] == "COSINE"
    assert info in listed  # other tests of this session add collections of their own


def test_search_is_reranked_in_the_order_the_vlm_chose(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        vlm.post("/control/scenario", json={"name": "json"})
    with stack.http() as http:
        response = http.post(
            "/v1/searches",
            files={"image": ("query.png", png_bytes((200, 40, 40)), "image/png")},
            data={"instruction": "phone case with this image theme", "limit": "6"},
        )
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
        job = wait_for_job(http, response.json()["id"])
        assert job["status"] == "succeeded", (job, stack.logs())
        panorama = http.get(f"/v1/jobs/{job['id']}/panorama")

    result = job["result"]
    assert isinstance(result, dict)
    candidates = result["candidates"]
    assert len(candidates) == 6
    assert result["model"] == "tiny-random" and "random" in result["warning"]
    # The fake VLM ranks the shown candidates in reverse vector order.
    assert [c["vector_rank"] for c in candidates] == [6, 5, 4, 3, 2, 1]
    assert [c["rank"] for c in candidates] == [1, 2, 3, 4, 5, 6]
    by_vector = sorted(candidates, key=lambda c: c["vector_rank"])
    scores = [c["score"] for c in by_vector]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)
    assert all(c["id"] in {sha256_id(d) for d in indexed.values()} for c in candidates)
    assert all(c["metadata"]["title"].startswith("item ") for c in candidates)

    rerank = result["rerank"]
    assert rerank["status"] == "applied"
    assert rerank["model"] == "fake-vlm-1"
    assert rerank["best_id"] == candidates[0]["id"]
    assert rerank["explanation"].startswith("fake-vlm")
    assert rerank["panorama_url"] == f"/v1/jobs/{job['id']}/panorama"

    assert panorama.status_code == 200 and panorama.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(panorama.content)).format == "JPEG"

    timings = job["timings_ms"]
    assert isinstance(timings, dict)
    assert all(timings[k] is not None and timings[k] >= 0 for k in ("queue", "embed", "search", "rerank", "total"))

    with stack.vlm() as vlm:
        requests = vlm.get("/control/requests").json()
    assert len(requests) == 1
    assert requests[0]["model"] == "fake-vlm-1"
    assert any("phone case with this image theme" in text for text in requests[0]["texts"])


def test_search_without_rerank_keeps_vector_order(stack: Stack, indexed: dict[str, bytes]) -> None:
    query = next(iter(indexed.values()))
    with stack.http() as http:
        response = http.post(
            "/v1/searches",
            json={"image_base64": base64.b64encode(query).decode(), "rerank": False, "limit": 3},
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
    assert job["status"] == "succeeded"
    result = job["result"]
    assert isinstance(result, dict)
    assert [c["vector_rank"] for c in result["candidates"]] == [1, 2, 3]
    assert result["candidates"][0]["id"] == sha256_id(query)  # an indexed image finds itself first
    assert result["rerank"]["status"] == "skipped"


def test_more_like_this_by_image_id_and_filter(stack: Stack, indexed: dict[str, bytes]) -> None:
    image_id = sha256_id(next(iter(indexed.values())))
    with stack.http() as http:
        response = http.post(
            "/v1/searches",
            data={"image_id": image_id, "rerank": "false", "filter": '{"category": "cat1"}', "limit": "50"},
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert isinstance(result, dict)
    assert len(result["candidates"]) == 10
    assert {c["metadata"]["category"] for c in result["candidates"]} == {"cat1"}


def test_idempotency_key_returns_the_same_job(stack: Stack, indexed: dict[str, bytes]) -> None:
    body = {"image_id": sha256_id(next(iter(indexed.values()))), "rerank": False}
    with stack.http() as http:
        first = http.post("/v1/searches", json=body, headers={"Idempotency-Key": "abc-123"})
        second = http.post("/v1/searches", json=body, headers={"Idempotency-Key": "abc-123"})
        other = http.post("/v1/searches", json={**body, "limit": 2}, headers={"Idempotency-Key": "abc-123"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    # Reused for another request by the same caller: 409 `conflict`, and the first job stays the key's.
    assert other.status_code == 409 and other.json()["type"] == "conflict", other.text


def test_a_running_search_canceled_ends_canceled_and_the_late_reranker_cannot_undo_it(
    stack: Stack, indexed: dict[str, bytes], vlm_control: httpx.Client
) -> None:
    instruction = "greener, then canceled"
    # The VLM answers after 2 s (within the 3 s timeout): the reranker will come back with a ranking to write.
    vlm_control.post("/control/scenario", json={"name": "sleep", "sleep_s": 2})
    reranker = stack.services["reranker"]
    with stack.http() as http:
        job = _post_search(http, instruction)
        wait_until(lambda: _asked(vlm_control, instruction) == 1, 30, "the VLM request", services=[reranker])
        [running_rerank] = unfinished(reranker.log_text(), TaskName.RERANK.value)
        assert http.get(f"/v1/jobs/{job['id']}").json()["stage"] == "reranking"

        canceled = http.delete(f"/v1/jobs/{job['id']}")
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert canceled.json()["error"]["detail"].startswith("the job was canceled")

        # The reranker gets its answer and finishes the task: its write must be refused.
        wait_until(
            lambda: running_rerank in task_ids(reranker.log_text(), TaskName.RERANK.value, "succeeded"),
            30,
            "the late rerank task to end",
            services=[reranker],
        )
        final = http.get(f"/v1/jobs/{job['id']}").json()
    assert final == canceled.json(), "a late worker changed a canceled job"
    assert final["result"]["rerank"]["status"] == "pending"


def test_delete_on_a_finished_job_returns_it_unchanged(stack: Stack, indexed: dict[str, bytes]) -> None:
    body = {"image_id": sha256_id(next(iter(indexed.values()))), "rerank": False, "limit": 2}
    with stack.http() as http:
        response = http.post("/v1/searches", json=body)
        assert response.status_code == 202, response.text
        finished = wait_for_job(http, response.json()["id"])
        assert finished["status"] == "succeeded", finished
        deleted = http.delete(f"/v1/jobs/{finished['id']}")
        after = http.get(f"/v1/jobs/{finished['id']}").json()
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == finished == after


def test_a_long_poll_returns_as_soon_as_the_job_changes(
    stack: Stack, indexed: dict[str, bytes], vlm_control: httpx.Client
) -> None:
    instruction = "long-polled"
    vlm_control.post("/control/scenario", json={"name": "sleep", "sleep_s": 2.5})
    with stack.http() as http:
        job = _post_search(http, instruction)
        wait_until(lambda: _asked(vlm_control, instruction) == 1, 30, "the VLM request")
        polled_at = time.time()
        # The job ends when the VLM answers, about 2.5 s from now: the poll must return then, not in 30 s.
        changed = http.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        returned_at = time.time()
    assert changed["status"] == "succeeded", changed
    changed_at = datetime.fromisoformat(changed["updated_at"]).timestamp()
    assert polled_at < changed_at, "the job changed before the poll began: nothing was waited for"
    # A fraction of a second in practice; 2 s of slack for a loaded 2-core machine, still far from the 30 s wait.
    assert returned_at - changed_at < 2.0, returned_at - changed_at


def test_concurrent_requests_with_one_idempotency_key_create_one_job(
    stack: Stack, indexed: dict[str, bytes], vlm_control: httpx.Client
) -> None:
    """Eight clients send the same search with the same key at once, ten times over (the race is in the moments
    between one request claiming the key and storing its job)."""
    clients = 8

    def post(key: str, start: threading.Barrier) -> httpx.Response:
        with stack.http() as http:
            start.wait(timeout=30)
            return http.post(
                "/v1/searches",
                files={"image": ("q.png", png_bytes((77, 7, 177), pattern=2), "image/png")},
                data={"instruction": f"exactly once with {key}", "limit": "3"},
                headers={"Idempotency-Key": key},
            )

    jobs: dict[str, str] = {}
    with ThreadPoolExecutor(clients) as pool, stack.http() as http:
        for round_ in range(10):
            key, start = f"one-key-{round_}", threading.Barrier(clients)
            responses = list(pool.map(lambda _: post(key, start), range(clients)))  # noqa: B023 (used at once)
            failed = [r.text for r in responses if r.status_code != 202]
            assert not failed, failed
            assert len({r.json()["id"] for r in responses}) == 1
            assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == clients - 1
            jobs[key] = responses[0].json()["id"]
        for job_id in jobs.values():
            assert wait_for_job(http, job_id)["status"] == "succeeded"
    # One job per key, so the VLM saw each search once.
    assert {key: _asked(vlm_control, f"exactly once with {key}") for key in jobs} == dict.fromkeys(jobs, 1)


def test_the_reranker_reranks_four_searches_at_once(
    stack: Stack, indexed: dict[str, bytes], vlm_control: httpx.Client
) -> None:
    """The reranker's default concurrency (4 processes): four searches wait on the VLM at the same time."""
    vlm_control.post("/control/scenario", json={"name": "sleep", "sleep_s": 2.5})
    with stack.http() as http:
        jobs = [_post_search(http, f"concurrent {i}") for i in range(4)]
        finished = [wait_for_job(http, job["id"]) for job in jobs]
    assert [job["result"]["rerank"]["status"] for job in finished] == ["applied"] * 4, finished
    asked = [text[:80] for r in vlm_control.get("/control/requests").json() for text in r["texts"][:1]]
    assert vlm_control.get("/control/concurrency").json()["max_in_flight"] == 4, asked
