"""Which key a job belongs to: stamped on its record at creation, checked on every read and cancel.

Another key's job answers exactly as a job that does not exist (404, same body), so job ids reveal nothing.
Admin keys, and every request when auth is off, see all jobs.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from services.common.job_store import JobNotFound, job_key
from services.gateway.auth import Principal

# A field of the job record (the workers never read nor write it).
JOB_OWNER_FIELD = "api_key"


def stamp_owner(record: dict[str, str], principal: Principal) -> dict[str, str]:
    if principal.name is not None:
        record[JOB_OWNER_FIELD] = principal.name
    return record


def job_not_found(job_id: str) -> JobNotFound:
    # The job store's words for an unknown id, so that the two answers cannot be told apart.
    return JobNotFound(f"job {job_id} does not exist or has expired")


async def check_job_access(client: aioredis.Redis, principal: Principal, job_id: str) -> None:
    """404 unless the caller may see this job (its own, or any for an admin)."""
    if principal.sees_every_job:
        return
    owner = await client.hget(job_key(job_id), JOB_OWNER_FIELD)
    if owner is None or (owner.decode() if isinstance(owner, bytes) else owner) != principal.name:
        raise job_not_found(job_id)
