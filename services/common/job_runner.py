"""Running one stage of a job so that every outcome ends in the job record, never in a silent hang."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery.exceptions import Retry, SoftTimeLimitExceeded

from services.common.errors import InternalError, MmragError
from services.common.job_store import JobNotFound, JobStore
from services.common.jobs import JobStage, JobStatus
from services.common.logs import job_logger

MAX_ATTEMPTS = 3


class JobGone(Exception):
    """The job expired, was canceled or already finished: the task has nothing left to do."""


def fail_job(jobs: JobStore, job_id: str, error: MmragError) -> None:
    jobs.update(
        job_id,
        fields={"status": JobStatus.FAILED.value, "stage": JobStage.DONE.value, "error": error.to_problem()},
    )


@contextmanager
def job_failures(jobs: JobStore, job_id: str, logger: logging.Logger, what: str) -> Iterator[None]:
    """End the job as failed, with a problem body saying why, whatever goes wrong inside."""
    log = job_logger(logger, job_id)
    try:
        yield
    except Retry:
        raise  # the task asked Celery to run it again later: the job goes on
    except JobGone as gone:
        log.info("%s stopped: %s", what, gone)
    except JobNotFound:
        log.warning("%s: the job record is gone (expired?)", what)
    except MmragError as error:
        # The detail is what clients read; what caused it (a library's exception) is for the log only.
        cause = f" ({type(error.__cause__).__name__}: {error.__cause__})" if error.__cause__ is not None else ""
        log.warning("%s failed: %s%s", what, error.detail, cause)
        fail_job(jobs, job_id, error)
    except Exception as error:
        if _past_time_limit(error):
            log.error("%s ran past its time limit", what)
            fail_job(jobs, job_id, InternalError(f"{what} ran past its time limit and was stopped"))
        else:
            log.exception("%s failed unexpectedly", what)
            # Never the exception's text: it may hold addresses, paths or a library's internals.
            fail_job(jobs, job_id, InternalError(f"{what} failed with an internal error, logged with this job's id"))


def _past_time_limit(error: BaseException) -> bool:
    """The soft time limit's exception, raised as is or wrapped by the library it interrupted (pymilvus wraps any
    exception raised during its calls in its own, and keeps only the text of the original)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, SoftTimeLimitExceeded) or SoftTimeLimitExceeded.__name__ in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def attempts_field(stage: str) -> str:
    return f"attempts.{stage}"


def guard_attempts(jobs: JobStore, job_id: str, stage: str) -> None:
    # How many times this stage has started: a task that kills its worker must not loop forever.
    attempts = jobs.increment(job_id, attempts_field(stage))
    if attempts > MAX_ATTEMPTS:
        raise InternalError(
            f"the {stage} stage was started {attempts} times and its worker died each time "
            "(out of memory, or killed at its hard time limit?)"
        )
