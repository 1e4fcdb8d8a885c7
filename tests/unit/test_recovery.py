"""Which tasks recovery sends again for a silent job, by its kind and stage; when a queued job is starved."""

from __future__ import annotations

import pytest

from services.common.jobs import JobKind, JobStage
from services.common.ownership import WorkItem, WorkKind
from services.common.queues import TaskName
from services.gateway.recovery import outstanding_item, outstanding_work, starved

JOB = "f" * 32


def _record(kind: JobKind, stage: JobStage, chunks: int = 0) -> dict[str, str]:
    return {"id": JOB, "kind": kind.value, "stage": stage.value, "status": "running", "chunks_total": str(chunks)}


@pytest.mark.parametrize(
    ("stage", "task"),
    [
        (JobStage.QUEUED, TaskName.SEARCH),
        (JobStage.EMBEDDING, TaskName.SEARCH),
        (JobStage.SEARCHING, TaskName.SEARCH),
        (JobStage.RERANKING, TaskName.RERANK),
    ],
)
def test_a_search_gets_the_task_of_its_stage(stage: JobStage, task: TaskName) -> None:
    assert outstanding_work(_record(JobKind.SEARCH, stage), set()) == [(task, [JOB])]


def test_an_index_job_gets_only_its_unfinished_chunks() -> None:
    work = outstanding_work(_record(JobKind.INDEX, JobStage.INDEXING, chunks=4), {0, 2})
    assert work == [(TaskName.INDEX, [JOB, 1]), (TaskName.INDEX, [JOB, 3])]


def test_an_index_job_with_every_chunk_in_gets_one_chunk_again_to_end_it() -> None:
    assert outstanding_work(_record(JobKind.INDEX, JobStage.INDEXING, chunks=3), {0, 1, 2}) == [
        (TaskName.INDEX, [JOB, 0])
    ]


def test_a_delete_gets_its_task_again() -> None:
    assert outstanding_work(_record(JobKind.DELETE, JobStage.DELETING), set()) == [(TaskName.DELETE_IMAGE, [JOB])]


DEAD = "host.123"


def _owned(stage: JobStage, owner: str | None, status: str = "running") -> dict[str, str]:
    record = {"id": JOB, "kind": "search", "stage": stage.value, "status": status}
    return record if owner is None else record | {"owner": owner}


@pytest.mark.parametrize(
    ("item", "record", "expected"),
    [
        # A search batch the dead process was embedding or searching: searched again (the claim takes it over).
        (WorkItem(WorkKind.SEARCH, JOB), _owned(JobStage.EMBEDDING, DEAD), (TaskName.SEARCH, [JOB])),
        (WorkItem(WorkKind.SEARCH, JOB), _owned(JobStage.SEARCHING, DEAD), (TaskName.SEARCH, [JOB])),
        # Taken over meanwhile by a live process: left to it.
        (WorkItem(WorkKind.SEARCH, JOB), _owned(JobStage.SEARCHING, "other.1"), None),
        # Handed to the reranker with no owner yet: its rerank task may never have been sent.
        (WorkItem(WorkKind.SEARCH, JOB), _owned(JobStage.RERANKING, ""), (TaskName.RERANK, [JOB])),
        # A reranker already has it: nothing to do.
        (WorkItem(WorkKind.SEARCH, JOB), _owned(JobStage.RERANKING, "reranker.7"), None),
        (WorkItem(WorkKind.RERANK, JOB), _owned(JobStage.RERANKING, DEAD), (TaskName.RERANK, [JOB])),
        (WorkItem(WorkKind.RERANK, JOB), _owned(JobStage.RERANKING, DEAD, status="succeeded"), None),
        (WorkItem(WorkKind.INDEX, JOB, 3), _owned(JobStage.INDEXING, None), (TaskName.INDEX, [JOB, 3])),
        (WorkItem(WorkKind.INDEX, JOB, 1), _owned(JobStage.INDEXING, None), None),  # chunk 1 is finished
        (WorkItem(WorkKind.DELETE, JOB), _owned(JobStage.DELETING, None), (TaskName.DELETE_IMAGE, [JOB])),
        (WorkItem(WorkKind.SEARCH, JOB), None, None),  # expired
    ],
)
def test_the_work_of_a_dead_process_is_sent_again_only_while_outstanding(
    item: WorkItem, record: dict[str, str] | None, expected: tuple[TaskName, list[object]] | None
) -> None:
    assert outstanding_item(item, record, DEAD, finished_chunks={1}) == expected


def test_work_items_read_back_as_written() -> None:
    for item in (WorkItem(WorkKind.SEARCH, JOB), WorkItem(WorkKind.INDEX, JOB, 12)):
        assert WorkItem.parse(str(item)) == item


NOW = 1_000.0


@pytest.mark.parametrize(
    ("created_ts", "without_consumer_since", "expected"),
    [
        (NOW - 11, NOW - 11, True),  # queued with no consumer for its whole 10 s limit
        (NOW - 11, None, False),  # a consumer is there: the job only waits in line
        (NOW - 60, NOW - 2, False),  # waited behind a worker that died 2 s ago: its replacement gets the limit
        (NOW - 2, NOW - 60, False),  # no consumer for long, but the job is new
        (NOW - 10, NOW - 30, True),  # exactly at the limit
    ],
)
def test_a_queued_job_is_starved_only_when_no_consumer_could_take_it_for_its_whole_limit(
    created_ts: float, without_consumer_since: float | None, expected: bool
) -> None:
    assert starved(created_ts, without_consumer_since, 10.0, NOW) is expected
