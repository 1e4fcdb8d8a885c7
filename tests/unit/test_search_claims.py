"""Claims of search jobs for dynamic batching: what a worker takes, what it leaves, and takeover by lease."""

from __future__ import annotations

import time

import redis

from services.common.heartbeat import lease_key
from services.common.job_store import PENDING_SEARCHES_KEY, JobStore, UpdateResult, new_job_id, new_record
from services.common.jobs import JobKind, JobStage, JobStatus, SearchParams, SearchQuery
from services.common.ownership import owned_key
from services.common.search_claims import SearchClaims


def _search(store: JobStore) -> str:
    job_id = new_job_id()
    params = SearchParams(collection="c", limit=3, rerank=False, query=SearchQuery(blob_id=f"query:{job_id}"))
    store.create(new_record(job_id, JobKind.SEARCH, params))
    time.sleep(0.002)  # distinct creation times: the pending set is ordered by them
    return job_id


def _worker(client: redis.Redis, owner: str, *, alive: bool = True) -> SearchClaims:
    if alive:
        client.set(lease_key(owner), "1", ex=30)
    return SearchClaims(client, owner, ttl_s=600)


def test_a_lone_search_claims_only_itself(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    job_id = _search(store)
    claim = _worker(redis_client, "a").claim(job_id, limit=32)
    assert (claim.own, claim.job_ids) == ("claimed", [job_id])
    record = store.raw(job_id)
    assert (record["status"], record["stage"], record["owner"]) == ("running", "embedding", "a")
    assert redis_client.zcard(PENDING_SEARCHES_KEY) == 0
    assert redis_client.smembers(owned_key("a")) == {f"search:{job_id}".encode()}


def test_a_claim_takes_its_own_job_first_then_the_oldest_waiting_up_to_the_limit(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    waiting = [_search(store) for _ in range(5)]
    own = waiting[3]
    claim = _worker(redis_client, "a").claim(own, limit=3)
    assert claim.job_ids == [own, waiting[0], waiting[1]]
    # The rest stay queued and pending for the next batch.
    assert store.get(waiting[2]).status is JobStatus.QUEUED
    assert [m.decode() for m in redis_client.zrange(PENDING_SEARCHES_KEY, 0, -1)] == [waiting[2], waiting[4]]
    # Their own messages, delivered later, find them taken and do nothing.
    assert _worker(redis_client, "b").claim(waiting[0], limit=1).own == "owned"


def test_canceled_and_expired_searches_are_dropped_from_the_pending_set(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    canceled, expired, fine = _search(store), _search(store), _search(store)
    store.update(canceled, fields={"status": JobStatus.CANCELED.value, "stage": JobStage.DONE.value})
    redis_client.delete(f"mmrag:job:{expired}")
    claim = _worker(redis_client, "a").claim(None, limit=32)
    assert (claim.own, claim.job_ids) == ("none", [fine])
    assert redis_client.zcard(PENDING_SEARCHES_KEY) == 0
    assert store.get(canceled).status is JobStatus.CANCELED


def test_a_job_handed_to_the_reranker_is_not_claimed_again(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    job_id = _search(store)
    _worker(redis_client, "a").claim(job_id, limit=1)
    store.update(job_id, fields={"stage": JobStage.RERANKING.value}, owner="a")
    assert _worker(redis_client, "b").claim(job_id, limit=1).own == "reranking"


def test_the_batch_of_a_dead_owner_is_taken_over_and_the_dead_owner_fenced_off(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    job_id = _search(store)
    _worker(redis_client, "dead").claim(job_id, limit=1)
    # While its lease lives, nobody else may take the job.
    assert _worker(redis_client, "b").claim(job_id, limit=1).own == "owned"
    redis_client.delete(lease_key("dead"))  # the lease lapses: the process is gone
    claim = _worker(redis_client, "b").claim(job_id, limit=1)
    assert claim.job_ids == [job_id]
    assert store.raw(job_id)["attempts.search"] == "2"
    # A late write from the old owner is refused; the new owner's is applied.
    late = store.update(job_id, fields={"status": "succeeded", "stage": "done"}, owner="dead")
    assert late is UpdateResult.REFUSED
    assert store.update(job_id, fields={"stage": "searching"}, owner="b") is UpdateResult.APPLIED


def test_an_owner_can_claim_again_what_it_held_in_an_earlier_task(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    job_id = _search(store)
    worker = _worker(redis_client, "a")
    worker.claim(job_id, limit=1)
    assert worker.claim(job_id, limit=1).job_ids == [job_id]
    worker.release([job_id])
    assert redis_client.scard(owned_key("a")) == 0


def test_searches_left_behind_by_an_interrupted_claim_are_taken_again(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 600)
    first, second, ended = _search(store), _search(store), _search(store)
    worker = _worker(redis_client, "a")
    worker.claim(first, limit=3)  # claims all three; say the reply was lost and the batch never ran
    store.update(ended, fields={"status": "succeeded", "stage": "done"}, owner="a")
    # The next claim of the same process (here for no job of its own) picks up what is still waiting.
    assert sorted(worker.claim(None, limit=32).job_ids) == sorted([first, second])
    assert redis_client.sismember(owned_key("a"), f"search:{ended}") == 0
