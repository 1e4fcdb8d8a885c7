"""Which tasks recovery sends again for a silent job, by its kind and stage."""

from __future__ import annotations

import pytest

from services.common.jobs import JobKind, JobStage
from services.common.queues import TaskName
from services.gateway.recovery import outstanding_work

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
