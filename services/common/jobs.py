"""The job model: what a client polls, and what the workers update stage by stage."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.common.filters import FilterValue


class JobKind(StrEnum):
    SEARCH = "search"
    INDEX = "index"
    DELETE = "delete"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class JobStage(StrEnum):
    QUEUED = "queued"
    EMBEDDING = "embedding"
    SEARCHING = "searching"
    RERANKING = "reranking"
    INDEXING = "indexing"
    DELETING = "deleting"
    DONE = "done"


class FailedItem(BaseModel):
    filename: str | None = None
    url: str | None = None
    id: str | None = None
    reason: str


class Progress(BaseModel):
    done: int = 0
    total: int = 0
    failed: list[FailedItem] = Field(default_factory=list)


class Timings(BaseModel):
    queue: float | None = None
    embed: float | None = None
    search: float | None = None
    rerank: float | None = None
    vlm: float | None = None
    total: float | None = None


class Candidate(BaseModel):
    rank: int
    vector_rank: int
    id: str
    score: float
    image_url: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class RerankInfo(BaseModel):
    status: Literal["applied", "skipped", "failed", "pending"]
    model: str | None = None
    best_id: str | None = None
    explanation: str | None = None
    reason: str | None = None
    panorama_url: str | None = None
    cached: bool = False


class SearchResult(BaseModel):
    collection: str
    model: str
    warning: str | None = None
    candidates: list[Candidate]
    rerank: RerankInfo
    # How many searches were embedded in the same forward pass as this one (dynamic batching).
    batch_size: int | None = None


class IndexResult(BaseModel):
    collection: str
    model: str
    warning: str | None = None
    indexed: int
    duplicates: int
    failed: int


class Job(BaseModel):
    """The public job body (SPEC "Job body")."""

    id: str
    kind: JobKind
    status: JobStatus
    stage: JobStage
    created_at: datetime
    updated_at: datetime
    progress: Progress = Field(default_factory=Progress)
    timings_ms: Timings = Field(default_factory=Timings)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class SearchQuery(BaseModel):
    """Where the query image is: an uploaded blob, or an image already in the collection; neither for a
    text-only search (the instruction alone is embedded)."""

    blob_id: str | None = None
    image_id: str | None = None

    @property
    def text_only(self) -> bool:
        return self.blob_id is None and self.image_id is None


class SearchParams(BaseModel):
    """What the gateway validated; the workers read it from the job record, never from the message."""

    collection: str
    instruction: str | None = None
    limit: int
    rerank: bool
    filter: dict[str, FilterValue] = Field(default_factory=dict)
    # Cosine similarity below which candidates are dropped, before any rerank.
    min_score: float | None = None
    query: SearchQuery


class IndexItem(BaseModel):
    id: str
    filename: str
    ext: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Where the image was fetched from, for an index job from URLs.
    url: str | None = None


class UrlItem(BaseModel):
    """An image to fetch, in a chunk of an index job from URLs: the worker that runs the chunk fetches it."""

    url: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DeleteParams(BaseModel):
    """One image of a collection, or (image_id None) the whole collection."""

    collection: str
    image_id: str | None = None


class DeleteResult(BaseModel):
    collection: str
    image_id: str
    removed: bool


class CollectionDropResult(BaseModel):
    collection: str
    removed: bool
    # The index jobs that were still running on it, failed because it was dropped under them.
    failed_index_jobs: list[str]


class IndexParams(BaseModel):
    collection: str
    chunks: int
    # What the chunks hold: IndexItems of images already in the media store, or UrlItems still to fetch.
    source: Literal["upload", "url"] = "upload"
