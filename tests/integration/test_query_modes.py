"""Query modes on the real stack: text-only searches (alone and batched with image searches), min_score, and
dropping a whole collection (also while an index job runs on it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.queues import Queue, TaskName
from services.reranker import panorama
from tests.integration.conftest import Stack, paused, png_bytes, sha256_id, wait_for_job
from tests.integration.test_cli import mmrag
from tests.support.processes import wait_until
from tests.support.tasks import messages_for, task_ids

pytestmark = pytest.mark.integration


def _started(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    job_id: str = response.json()["id"]
    return job_id


def _index(http: httpx.Client, collection: str, images: list[tuple[str, bytes]]) -> str:
    files = [("files", (name, data, "image/png")) for name, data in images]
    return _started(http.post(f"/v1/collections/{collection}/images", files=files))


def _images(seed: int, count: int) -> list[tuple[str, bytes]]:
    return [
        (f"q{seed}_{i}.png", png_bytes(((seed * 59 + i * 31) % 256, (i * 67) % 256, (seed * 7) % 256), pattern=i % 5))
        for i in range(count)
    ]


def _vlm_requests_about(stack: Stack, instruction: str) -> list[dict[str, Any]]:
    with stack.vlm() as vlm:
        requests: list[dict[str, Any]] = vlm.get("/control/requests").json()
    return [r for r in requests if any(instruction in text for text in r["texts"])]


def test_a_text_only_search_is_a_search_job_reranked_without_a_query_tile(
    stack: Stack, indexed: dict[str, bytes]
) -> None:
    instruction = "text only: a green phone case"
    with stack.http() as http:
        job = wait_for_job(http, _started(http.post("/v1/searches", data={"instruction": instruction, "limit": "5"})))
        as_json = wait_for_job(
            http,
            _started(http.post("/v1/searches", json={"instruction": instruction, "limit": 5, "rerank": False})),
        )
        panorama_response = http.get(f"/v1/jobs/{job['id']}/panorama")

    assert job["status"] == "succeeded" and job["kind"] == "search", (job, stack.logs())
    result = job["result"]
    gallery_ids = {sha256_id(data) for data in indexed.values()}
    assert len(result["candidates"]) == 5 and {c["id"] for c in result["candidates"]} <= gallery_ids
    assert result["rerank"]["status"] == "applied", result["rerank"]
    # The fake VLM ranks in reverse: the reranked order is the vector order turned round.
    assert [c["vector_rank"] for c in result["candidates"]] == [5, 4, 3, 2, 1]
    [asked] = _vlm_requests_about(stack, instruction)
    prompt = " ".join(asked["texts"])
    assert "there is no query image" in prompt.lower() and "blue border" not in prompt
    layout = panorama.plan(5, show_query=False)
    assert (asked["image"]["width"], asked["image"]["height"]) == (layout.width, layout.height)
    assert panorama_response.status_code == 200 and panorama_response.content.startswith(b"\xff\xd8")

    # The same text as JSON, without rerank: the same vector, so the same candidates in vector order.
    assert as_json["status"] == "succeeded", as_json
    assert as_json["result"]["rerank"]["reason"] == "rerank=false in the request"
    by_vector_rank = sorted(result["candidates"], key=lambda c: c["vector_rank"])
    assert [c["id"] for c in as_json["result"]["candidates"]] == [c["id"] for c in by_vector_rank]


def test_text_only_and_image_searches_waiting_together_run_in_one_batch(
    stack: Stack, indexed: dict[str, bytes]
) -> None:
    text = "text only in a batch: something striped"
    image_id = sha256_id(next(iter(indexed.values())))
    with stack.http() as http:
        alone = wait_for_job(http, _started(http.post("/v1/searches", json={"instruction": text, "rerank": False})))
        with paused(stack):
            job_ids = [
                _started(http.post("/v1/searches", json={"instruction": text, "rerank": False})),
                _started(
                    http.post(
                        "/v1/searches",
                        files={"image": ("q.png", png_bytes((10, 200, 30)), "image/png")},
                        data={"instruction": "the same, in red", "rerank": "false"},
                    )
                ),
                _started(http.post("/v1/searches", json={"image_id": image_id, "rerank": False})),
                _started(http.post("/v1/searches", json={"instruction": "text only: plain", "rerank": False})),
            ]
        jobs = [wait_for_job(http, job_id) for job_id in job_ids]

    assert all(job["status"] == "succeeded" for job in [alone, *jobs]), (jobs, stack.logs())
    assert [job["result"]["batch_size"] for job in jobs] == [4] * 4
    # A text-only query embeds to the same vector in a mixed batch as alone (up to the compute dtype's rounding).
    batched = jobs[0]["result"]["candidates"]
    assert batched[0]["id"] == alone["result"]["candidates"][0]["id"]
    scores = {c["id"]: c["score"] for c in alone["result"]["candidates"]}
    assert all(abs(c["score"] - scores[c["id"]]) < 0.02 for c in batched if c["id"] in scores)
    # "More like this" in the same batch still finds its own image first.
    assert jobs[2]["result"]["candidates"][0]["id"] == image_id


def test_min_score_drops_candidates_before_the_rerank(stack: Stack, indexed: dict[str, bytes]) -> None:
    text = "min score: a plain square"
    with stack.http() as http:
        everything = wait_for_job(
            http, _started(http.post("/v1/searches", json={"instruction": text, "limit": 20, "rerank": False}))
        )
        scores = [c["score"] for c in everything["result"]["candidates"]]
        # A threshold strictly between two neighbouring scores, keeping at least two candidates.
        cut = next(i for i in range(2, len(scores)) if scores[i - 1] > scores[i])
        threshold = (scores[cut - 1] + scores[cut]) / 2
        some = wait_for_job(
            http,
            _started(
                http.post(
                    "/v1/searches",
                    data={"instruction": text, "limit": "20", "min_score": repr(threshold)},
                )
            ),
        )
        above_all = min(1.0, scores[0] + (1 - scores[0]) / 2) if scores[0] < 1 else 1.0
        none = wait_for_job(
            http,
            _started(http.post("/v1/searches", json={"instruction": text, "limit": 20, "min_score": above_all})),
        )

    assert some["status"] == "succeeded", (some, stack.logs())
    kept = some["result"]["candidates"]
    assert sorted(c["vector_rank"] for c in kept) == list(range(1, cut + 1))
    assert all(c["score"] >= threshold for c in kept)
    assert some["result"]["rerank"]["status"] == "applied"
    [asked] = _vlm_requests_about(stack, text)
    assert asked["shown"] == list(range(cut)), "the VLM saw candidates below min_score"

    if scores[0] < 1:
        assert none["status"] == "succeeded", (none, stack.logs())
        assert none["result"]["candidates"] == []
        rerank = none["result"]["rerank"]
        assert rerank["status"] == "skipped" and "below min_score" in rerank["reason"], rerank


def _collection_gone(http: httpx.Client, name: str, image_id: str) -> None:
    assert http.get(f"/v1/collections/{name}").status_code == 404
    assert http.get(f"/v1/collections/{name}/images").status_code == 404
    assert http.get(f"/v1/collections/{name}/images/{image_id}").status_code == 404
    search = http.post("/v1/searches", json={"instruction": "anything", "collection": name})
    assert search.status_code == 404 and search.json()["type"] == "not-found", search.text
    assert name not in [c["name"] for c in http.get("/v1/collections").json()]


def test_deleting_a_collection_drops_its_index_files_and_entry_and_the_name_can_be_used_again(stack: Stack) -> None:
    name = "qm_dropped"
    images = _images(1, 3)
    media = Path(stack.env["MMRAG_DATA_DIR"]) / "media" / name
    with stack.http() as http:
        assert wait_for_job(http, _index(http, name, images))["status"] == "succeeded"
        assert media.is_dir()
        assert http.delete("/v1/collections/no_such_collection").status_code == 404

        job = wait_for_job(http, _started(http.delete(f"/v1/collections/{name}")))
        assert job["kind"] == "delete" and job["status"] == "succeeded", (job, stack.logs())
        assert job["result"] == {"collection": name, "removed": True, "failed_index_jobs": []}
        _collection_gone(http, name, sha256_id(images[0][1]))
        assert not media.exists()
        assert http.delete(f"/v1/collections/{name}").status_code == 404

        # Made again under the same name: a new, empty collection holding only what is indexed now.
        again = wait_for_job(http, _index(http, name, images[:1]))
        assert again["status"] == "succeeded" and again["result"]["indexed"] == 1, (again, stack.logs())
        assert http.get(f"/v1/collections/{name}").json()["count"] == 1
        found = wait_for_job(
            http, _started(http.post("/v1/searches", json={"image_id": sha256_id(images[0][1]), "collection": name}))
        )
        assert [c["id"] for c in found["result"]["candidates"]] == [sha256_id(images[0][1])]
        wait_for_job(http, _started(http.delete(f"/v1/collections/{name}")))


def test_deleting_a_collection_fails_the_index_job_running_on_it(stack: Stack) -> None:
    name = "qm_dropped_busy"
    with stack.http() as http:
        assert wait_for_job(http, _index(http, name, _images(2, 1)))["status"] == "succeeded"
        with paused(stack):
            # The delete first: a frozen worker may already be blocked in BRPOP, and then it is handed the first
            # message to arrive. Either way the delete runs first, and the index job is active by then.
            delete_job = _started(http.delete(f"/v1/collections/{name}"))
            index_job = _index(http, name, _images(3, 4))
            with stack.redis() as client:
                [chunk_message] = messages_for(client, [index_job])[Queue.INDEX.value]
        dropped = wait_for_job(http, delete_job)
        stopped = wait_for_job(http, index_job)
        # The chunk's own task, run after the delete, must have ended before the checks below mean anything.
        chunk_task = json.loads(chunk_message)["headers"]["id"]
        embedder = stack.services["embedder"]
        wait_until(
            lambda: chunk_task in task_ids(embedder.log_text(), TaskName.INDEX.value, "succeeded"),
            60,
            "the index chunk's task to end",
            services=[embedder],
        )

    assert dropped["status"] == "succeeded", (dropped, stack.logs())
    assert dropped["result"]["failed_index_jobs"] == [index_job]
    assert stopped["status"] == "failed" and stopped["error"]["type"] == "not-found", stopped
    assert f"collection {name!r} was deleted" in stopped["error"]["detail"]
    with stack.http() as http:
        # The chunk that arrived afterwards wrote nothing, and did not make the collection again.
        _collection_gone(http, name, sha256_id(_images(3, 4)[0][1]))


def test_mmrag_search_by_text_alone_with_a_min_score(stack: Stack, indexed: dict[str, bytes]) -> None:
    run = mmrag(stack, "search", "--text", "cli: a blue thing", "--min-score", "-1", "--limit", "3", "--json")
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "succeeded" and len(job["result"]["candidates"]) == 3
    assert job["result"]["rerank"]["status"] == "applied"

    nothing = mmrag(stack, "search")
    assert nothing.returncode == 2 and "--text" in nothing.stderr, nothing.stderr


def test_mmrag_ls_pages_through_a_collection_and_collections_delete_drops_it(stack: Stack) -> None:
    name = "qm_cli"
    images = _images(4, 3)
    with stack.http() as http:
        files = [("files", (n, d, "image/png")) for n, d in images]
        metadata = "\n".join(json.dumps({"filename": n, "title": f"[b]{n}[/b]"}) for n, _ in images)
        files.append(("metadata", ("m.jsonl", metadata.encode(), "application/jsonl")))
        assert wait_for_job(http, _started(http.post(f"/v1/collections/{name}/images", files=files)))["status"] == (
            "succeeded"
        )
    titles = {sha256_id(d): f"[b]{n}[/b]" for n, d in images}

    as_json = mmrag(stack, "ls", name, "--json")
    assert as_json.returncode == 0, as_json.stderr
    items = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [item["id"] for item in items] == sorted(titles)
    assert all(item["metadata"] == {"title": titles[item["id"]]} for item in items)
    for_people = mmrag(stack, "ls", name)
    assert for_people.returncode == 0, for_people.stderr
    # Metadata is printed as it is (never read as console markup).
    assert for_people.stdout.splitlines() == [f'{i}  {{"title": "{titles[i]}"}}' for i in sorted(titles)]
    assert "3 images in 'qm_cli'" in for_people.stderr

    dropped = mmrag(stack, "collections", "delete", name, "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped {name!r}" in dropped.stdout
    gone = mmrag(stack, "ls", name)
    assert gone.returncode == 1 and "404" in gone.stderr, gone.stderr
