"""Configuration from the environment, read once per process.

Every variable is `MMRAG_<FIELD>` except `OPENAI_API_KEY`, which keeps the name the OpenAI tooling uses.
A bad value stops start-up with a message that names the variable (see `load_settings`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.common.redaction import redact_url

ModelName = Literal["bge-visualized-base-en-v1.5", "bge-visualized-m3", "tiny-random"]
DTypeName = Literal["auto", "float32", "float16", "bfloat16"]
_DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda(:\d+)?)")
_ORIGIN_PATTERN = re.compile(r"https?://[^/\s*]+")
# A key an operator chose must be as hard to guess as the generated ones (32 random bytes).
MIN_BOOTSTRAP_KEY_CHARS = 32
ENV_PREFIX = "MMRAG_"
# Seconds between a task's soft time limit (an exception it can handle) and the hard kill of its process.
HARD_LIMIT_GRACE_S = 15.0


class ConfigurationError(RuntimeError):
    """Raised at start-up when an environment variable has a value mmrag cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Wiring
    redis_url: str = "redis://localhost:6379/0"
    data_dir: Path = Path("./data")
    milvus_uri: str | None = None
    milvus_token: SecretStr | None = None
    # Longest a Milvus call may take, retries included: past it a search fails as `unavailable` and an index chunk
    # is retried later (pymilvus alone would retry a call against a server that is down for minutes).
    milvus_timeout_s: float = Field(default=10.0, gt=0)
    gateway_url: str = "http://127.0.0.1:8000"

    # Model
    model: ModelName = "bge-visualized-base-en-v1.5"
    model_weights: Path | None = None
    device: str = "auto"
    dtype: DTypeName = "auto"
    encoder_backend: Literal["native", "flagembedding"] = "native"
    # Threads for the model on the CPU. Unset: all CPUs but one when there are several, leaving one to the rest of
    # the process (Redis, Milvus, decoding) and to whatever shares the host; measured on 2 cores shared with the
    # gateway, torch's default of one thread per core cost 1.4x the CPU per search in busy-waiting.
    torch_threads: int | None = Field(default=None, ge=1, le=512)
    # Images per index task (a chunk of an index job), and per forward pass within it: the next batch of a
    # chunk is decoded and resized while the model computes the current one. On a GPU raise both (512 / 128).
    index_batch_size: int = Field(default=32, ge=1, le=1024)
    encode_batch_size: int = Field(default=16, ge=1, le=1024)
    # Most searches embedded in one forward pass: those waiting when the model becomes free (no batching window).
    search_batch_size: int = Field(default=32, ge=1, le=512)
    # Decode images at about twice the model's input size instead of in full (JPEG: DCT scaling); see
    # services/common/images.py for the measured difference in the vectors. Off: every image decoded in full.
    decode_reduced: bool = True
    # Threads decoding the images of an index chunk; unset: one per CPU this process may use.
    decode_threads: int | None = Field(default=None, ge=1, le=256)

    # Reranker (the VLM)
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "MMRAG_OPENAI_API_KEY")
    )
    llm_base_url: str | None = None
    llm_api_version: str | None = None  # set → Azure OpenAI
    llm_model: str = "gpt-4o"
    llm_timeout_s: float = Field(default=30.0, gt=0)
    rerank_budget_s: float = Field(default=60.0, gt=0)
    rerank_shuffle: bool = False
    rerank_cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=0)

    # Jobs and uploads
    job_ttl_s: int = Field(default=24 * 3600, ge=60)
    max_upload_mb: float = Field(default=10.0, gt=0)
    # 25 MP holds a 24 MP camera frame (6000×4000), more than a product photo needs. JPEGs are decoded reduced, but
    # other formats whole before they are shrunk: an RGBA image and its RGB copy, 175 MB per decode thread at 25 MP.
    max_image_pixels: int = Field(default=25_000_000, ge=1)
    max_instruction_chars: int = Field(default=2_000, ge=1)
    max_index_files: int = Field(default=10_000, ge=1)
    # Metadata of one image, as compact JSON: it is stored in Milvus (a JSON field of at most 64 KiB), in the
    # job's chunk records in Redis and beside the image, and returned with every search hit. 8 KiB holds a title,
    # a category, a price and a long description.
    max_metadata_bytes: int = Field(default=8192, ge=64, le=65536)
    # The metadata of one upload request together (the metadata part, JSON Lines): what the gateway parses and
    # writes into Redis for one request.
    max_metadata_mb: float = Field(default=16.0, gt=0)
    # Collections, counting names an upload has reserved and the embedder not yet created. Each one is a Milvus
    # collection and a registry entry without TTL.
    max_collections: int = Field(default=1000, ge=1)

    # Fetching images from URLs (POST /v1/collections/{name}/images with JSON), done by the embedder workers.
    # Only public addresses are ever connected to, except those inside these networks (comma-separated CIDRs).
    fetch_allow_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    # One attempt: connecting, the answer and its whole body. Timeouts, 5xx and 429 are tried again, with backoff.
    fetch_timeout_s: float = Field(default=15.0, gt=0)
    fetch_attempts: int = Field(default=3, ge=1, le=10)
    # URLs of one index chunk fetched at once.
    fetch_concurrency: int = Field(default=8, ge=1, le=256)

    # Keys and limits. `auth` unset: off, allowed only on a loopback address (services/gateway/exposure.py).
    auth: Literal["required", "off"] | None = None
    bootstrap_admin_key: SecretStr | None = None
    api_key: SecretStr | None = None  # what the CLI sends
    # New jobs of a kind get 503 while that kind's backlog is this long: searches waiting for a worker, or
    # index jobs not finished.
    max_queued_jobs: int = Field(default=1000, ge=1)
    max_active_jobs_per_key: int = Field(default=100, ge=1)
    # Long-polls (`GET /v1/jobs/{id}?wait=`) one gateway process holds at once; past it they get 429. Each costs an
    # open connection (a file descriptor) and a few KB, no Redis connection of its own (gateway/job_events.py).
    max_long_polls: int = Field(default=1000, ge=1)
    # Origins whose pages may call the API from a browser (comma-separated); none by default.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    # Worker reliability: one source for the local stack, compose and Kubernetes.
    search_time_limit_s: float = Field(default=120.0, gt=0)
    index_time_limit_s: float = Field(default=900.0, gt=0)
    visibility_timeout_s: float | None = None
    # A worker process owns the job stages it runs for as long as its lease lives (renewed every third of this);
    # once it has lapsed, the gateway's recovery sends the work again. Takeover takes at most this plus the
    # recovery period (a third of it, at most 5 s).
    lease_ttl_s: float = Field(default=15.0, ge=3.0, le=600.0)
    # Longest a worker pool process may take to start (the embedder loads its model there, and may download it
    # first). Celery kills a process that has not reported up within this (its own default, 4 s, kills a
    # replacement process that loads 1 GB of weights over and over).
    worker_start_timeout_s: float = Field(default=600.0, gt=0)

    # Logs: `json` writes one JSON object per line (logs.py reads it straight from the environment, before
    # settings load; declared here so that a bad value stops start-up with a message).
    log_format: Literal["text", "json"] = "text"
    # A worker serves its pool's process metrics on this port (worker_metrics.py); unset: none.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("device")
    @classmethod
    def _device_is_known(cls, value: str) -> str:
        if not _DEVICE_PATTERN.fullmatch(value):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("bootstrap_admin_key")
    @classmethod
    def _bootstrap_key_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_BOOTSTRAP_KEY_CHARS:
            raise ValueError(
                f"must be at least {MIN_BOOTSTRAP_KEY_CHARS} characters of random data (openssl rand -hex 32)"
            )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_are_exact(cls, value: object) -> object:
        if isinstance(value, str):
            value = [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        for origin in value if isinstance(value, list | tuple) else ():
            if not _ORIGIN_PATTERN.fullmatch(str(origin)):
                raise ValueError(f"{origin!r} is not an origin: expected scheme://host[:port], no wildcard, no path")
        return value

    @field_validator("fetch_allow_networks", mode="before")
    @classmethod
    def _networks_are_cidrs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        networks = []
        for text in (part.strip() for part in value.split(",")):
            if not text:
                continue
            try:
                # Host bits are tolerated: 10.1.2.3/24 means the /24 around it.
                networks.append(ip_network(text, strict=False))
            except ValueError:
                raise ValueError(
                    f"{text!r} is not a network: expected CIDRs such as 203.0.113.0/24 or 2001:db8::/32"
                ) from None
        return tuple(networks)

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_metadata_total_bytes(self) -> int:
        return int(self.max_metadata_mb * 1024 * 1024)

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def resolved_milvus_uri(self) -> str:
        """A URL means a Milvus server; anything else is a Milvus Lite file (default under the data dir)."""
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def milvus_is_server(self) -> bool:
        return self.resolved_milvus_uri.startswith(("http://", "https://", "tcp://", "grpc://"))

    @property
    def vlm_configured(self) -> bool:
        return self.openai_api_key is not None or self.llm_base_url is not None

    @property
    def rerank_time_limit_s(self) -> float:
        # The VLM budget plus panorama building and bookkeeping.
        return self.rerank_budget_s + 10.0

    @property
    def longest_task_s(self) -> float:
        """The longest any task may run: its soft limit plus the grace before the hard kill."""
        longest_soft = max(self.search_time_limit_s, self.index_time_limit_s, self.rerank_time_limit_s)
        return longest_soft + HARD_LIMIT_GRACE_S

    @property
    def effective_visibility_timeout_s(self) -> float:
        """Redis redelivers an unacknowledged task after this long: it must outlast the longest task."""
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return self.longest_task_s + 60.0


# Settings whose value is a secret (never printed), and URLs (printed without their password).
_SECRET_FIELDS = frozenset(name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation))
_URL_FIELDS = frozenset({"redis_url", "milvus_uri", "llm_base_url", "gateway_url"})


def _shown(field: str, value: object) -> str:
    """A bad value as the error message may show it."""
    if field in _SECRET_FIELDS:
        return f"a value of {len(str(value))} characters, not shown"
    if field in _URL_FIELDS and isinstance(value, str):
        return repr(redact_url(value))
    return repr(value)


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "?"
        variable = "OPENAI_API_KEY" if field == "openai_api_key" else f"{ENV_PREFIX}{field.upper()}"
        lines.append(f"{variable}: {problem['msg']} (got {_shown(field, problem.get('input'))})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """The process-wide settings; a bad value raises ConfigurationError naming the variable."""
    try:
        settings = Settings()
    except ValidationError as error:
        raise ConfigurationError(_describe(error)) from None
    if settings.visibility_timeout_s is not None and settings.visibility_timeout_s <= settings.longest_task_s:
        raise ConfigurationError(
            f"invalid configuration:\n  {ENV_PREFIX}VISIBILITY_TIMEOUT_S: must exceed the longest a task may run "
            f"({settings.longest_task_s:.0f} s with the hard-limit grace), or a running task would be delivered twice"
        )
    return settings
