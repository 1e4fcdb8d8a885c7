"""Every way a stage can end puts the job in a final state with a problem that says why."""

from __future__ import annotations

import logging

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from pymilvus import MilvusException

from services.common.job_runner import job_failures
from services.common.job_store import JobStore, new_job_id, new_record
from services.common.jobs import IndexParams, JobKind, JobStatus

log = logging.getLogger(__name__)


def _job(store: JobStore) -> str:
    job_id = new_job_id()
    store.create(new_record(job_id, JobKind.INDEX, IndexParams(collection="c", chunks=1), total=1, chunks=1))
    return job_id


def _wrapped_by_pymilvus() -> MilvusException:
    """What pymilvus raises when the soft limit interrupts one of its calls: its own error, the original's text."""
    try:
        try:
            raise SoftTimeLimitExceeded()
        except Exception as error:
            raise MilvusException(message=f"Unexpected error, message=<{error!s}>") from error
    except MilvusException as wrapped:
        try:
            raise wrapped from wrapped  # its retry layer re-raises it so, which loses the original
        except MilvusException as rethrown:
            return rethrown


@pytest.mark.parametrize(
    "raised",
    [SoftTimeLimitExceeded(), _wrapped_by_pymilvus()],
    ids=["as is", "wrapped by pymilvus"],
)
def test_a_stage_past_its_soft_time_limit_fails_its_job_saying_so(redis_client: redis.Redis, raised: Exception) -> None:
    store = JobStore(redis_client, ttl_s=600)
    job_id = _job(store)
    with job_failures(store, job_id, log, "indexing chunk 0"):
        raise raised
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error["detail"] == "indexing chunk 0 ran past its time limit and was stopped"


def test_any_other_error_fails_the_job_and_only_the_log_has_its_text(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(redis_client, ttl_s=600)
    job_id = _job(store)
    with caplog.at_level(logging.ERROR), job_failures(store, job_id, log, "indexing chunk 0"):
        raise MilvusException(message="collection not loaded at 10.1.2.3:19530")
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error["type"] == "internal"
    # Clients read a stable detail; the library's words (here an address) are in the log, with the job id.
    assert job.error["detail"] == "indexing chunk 0 failed with an internal error, logged with this job's id"
    assert "10.1.2.3" not in str(job.error)
    logged = [r for r in caplog.records if "10.1.2.3" in (r.exc_text or "") + r.getMessage()]
    assert logged and job_id in logged[0].getMessage(), caplog.text
