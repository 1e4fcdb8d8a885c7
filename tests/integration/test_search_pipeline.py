"""One search travels gateway → Redis → embedder → reranker (fake VLM over HTTP) and is polled back."""

from __future__ import annotations

import io

from PIL import Image

from tests.integration.conftest import Stack, png_bytes, sha256_id, wait_for_job


def test_index_job_reports_progress_and_registers_the_collection(stack: Stack, indexed: dict[str, bytes]) -> None:
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
            json={"image_base64": __import__("base64").b64encode(query).decode(), "rerank": False, "limit": 3},
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
    assert other.status_code == 400 and other.json()["type"] == "invalid-request"


def test_cancel_ends_the_job_as_canceled(stack: Stack, indexed: dict[str, bytes]) -> None:
    with stack.vlm() as vlm:
        vlm.post("/control/scenario", json={"name": "sleep", "sleep_s": 3})
    try:
        with stack.http() as http:
            job = http.post(
                "/v1/searches",
                files={"image": ("q.png", png_bytes((10, 200, 10)), "image/png")},
                data={"instruction": "greener"},
            ).json()
            canceled = http.delete(f"/v1/jobs/{job['id']}").json()
            assert canceled["status"] == "canceled"
            assert canceled["error"]["detail"].startswith("the job was canceled")
            final = wait_for_job(http, job["id"])
            assert final["status"] == "canceled"
    finally:
        with stack.vlm() as vlm:
            vlm.post("/control/scenario", json={"name": "json"})
