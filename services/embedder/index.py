"""The vector index: Milvus (Lite file or server) behind the few operations the embedder needs."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException
from pymilvus.exceptions import ConnectError, MilvusUnavailableException

from services.common.errors import InvalidRequest, Unavailable
from services.common.filters import FilterValue, filter_problem
from services.common.redaction import redact_url

log = logging.getLogger(__name__)
METRIC = "COSINE"
_ID_LENGTH = 64
_HNSW_BUILD = {"M": 16, "efConstruction": 200}
# How long to wait for the vector index of a collection that exists without one. Another embedder creating the
# collection makes it, then its index, in two calls; a creator that died between them never adds the index.
INDEX_WAIT_S = 10.0


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any]


def _hit(image_id: Any, distance: Any, row: Mapping[str, Any]) -> Hit:
    return Hit(id=str(image_id), score=float(distance), metadata=dict(row.get("metadata") or {}))


def _literal(value: FilterValue) -> str:
    # JSON's string syntax is Milvus's: quotes and backslashes escaped, so a value can never end the literal
    # and change the expression. Non-ASCII stays as it is (Milvus refuses \u escapes); filter_problem has
    # already refused the control characters that would need one. (Milvus Lite cannot bind parameters.)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def filter_expression(equalities: Mapping[str, FilterValue]) -> str:
    problem = filter_problem(equalities)
    if problem is not None:
        raise InvalidRequest(problem)
    return " and ".join(f'metadata["{key}"] == {_literal(value)}' for key, value in sorted(equalities.items()))


class VectorIndexUnavailable(Unavailable):
    """Milvus did not answer in time (a server that is down or restarting): a search fails fast with this, and
    an index chunk is retried later with backoff (tasks.py)."""


# The client calls that reach the server. pymilvus retries a failed call up to 75 times with backoff unless the
# call carries a timeout: without one, a search against a server that is down would hang for minutes.
_RPC_METHODS = frozenset(
    {
        "has_collection",
        "load_collection",
        "create_collection",
        "list_indexes",
        "create_index",
        "get",
        "upsert",
        "search",
        "flush",
        "delete",
        "query",
        "drop_collection",
    }
)


_COLLECTION_NOT_LOADED = 101


class _BoundedClient:
    """A MilvusClient whose server calls are bounded by `timeout_s`, and whose outages raise
    VectorIndexUnavailable (errors in what was asked, a bad filter say, pass through unchanged)."""

    def __init__(self, client: MilvusClient, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name not in _RPC_METHODS:
            return method

        def bounded(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self._timeout_s)
            try:
                try:
                    return method(*args, **kwargs)
                except MilvusException as error:
                    if error.code != _COLLECTION_NOT_LOADED or not args or name == "load_collection":
                        raise
                    # A restarted server has every collection released: load it again, then retry once.
                    self._client.load_collection(args[0], timeout=self._timeout_s)
                    return method(*args, **kwargs)
            except (grpc.RpcError, grpc.FutureTimeoutError, MilvusUnavailableException, ConnectError) as error:
                # The library's words stay in the cause (logged with the job id), out of the job's error.
                raise VectorIndexUnavailable("the vector index (Milvus) is unavailable: retry later") from error
            except MilvusException as error:
                if "timeout" not in str(error).lower() and "unavailable" not in str(error).lower():
                    raise
                raise VectorIndexUnavailable(
                    f"the vector index (Milvus) did not answer within {self._timeout_s:g} s: retry later"
                ) from error

        return bounded


def _raised_in_this_process(error: MilvusException) -> bool:
    # pymilvus turns any exception raised during a call (a time limit's, a signal's) into "Unexpected error".
    return "Unexpected error" in str(error)


class VectorIndex:
    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        is_server: bool = False,
        timeout_s: float = 10.0,
        index_wait_s: float = INDEX_WAIT_S,
    ) -> None:
        try:
            client = MilvusClient(uri=uri, token=token or "", timeout=timeout_s)
        except (grpc.RpcError, grpc.FutureTimeoutError, MilvusException) as error:
            log.error("the vector index (Milvus) at %s is unavailable: %s", redact_url(uri), error)
            raise VectorIndexUnavailable("the vector index (Milvus) is unavailable: retry later") from error
        self._client: Any = _BoundedClient(client, timeout_s)
        self._lite_path = None if is_server else Path(uri)
        self._is_server = is_server
        # A Lite file has one process: no one else can be creating the index, so there is nothing to wait for.
        self._index_wait_s = index_wait_s if is_server else 0.0
        # Collection name → the generation loaded (see `open`).
        self._loaded: dict[str, str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def has(self, name: str) -> bool:
        return name in self._loaded or bool(self._client.has_collection(name))

    def open(self, name: str, generation: str = "") -> bool:
        """Load an existing collection for search (once per process and generation); False if it does not exist.

        `generation` names one life of the collection (the registry's created_at): a collection dropped and made
        again, by this process or another embedder on the same server, is a new generation and is looked up
        afresh, not taken for the one loaded before."""
        with self._lock:
            if self._loaded.get(name) == generation:
                return True
            if not self._client.has_collection(name):
                self._loaded.pop(name, None)
                return False
            # Being created by another embedder right now: loading fails (code 700) until its index exists.
            self._wait_for_index(name)
            self._client.load_collection(name)
            self._loaded[name] = generation
            return True

    def ensure_collection(self, name: str, dim: int, generation: str = "") -> None:
        """Create the collection on first use, or open the one another embedder made (safe when they race)."""
        with self._lock:
            if self._loaded.get(name) == generation:
                return
            if not self._client.has_collection(name):
                self._create(name, dim)
            if not self._wait_for_index(name):
                log.warning("collection %r has no vector index (its creator died?): creating it", name)
                self._client.create_index(name, self._index_params())
            self._client.load_collection(name)
            self._loaded[name] = generation

    def drop(self, name: str) -> bool:
        """Drop the collection and its vectors; False if there was none."""
        with self._lock:
            self._loaded.pop(name, None)
            if not self._client.has_collection(name):
                return False
            self._client.drop_collection(name)
            log.info("dropped Milvus collection %r", name)
            return True

    def _wait_for_index(self, name: str) -> bool:
        """True once the collection has its vector index; False if it still has none after the wait."""
        deadline = time.monotonic() + self._index_wait_s
        delay = 0.05
        while not self._client.list_indexes(name, field_name="vector"):
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        return True

    def _index_params(self) -> Any:
        index_params = self._client.prepare_index_params()
        if self._is_server:
            index_params.add_index("vector", index_type="HNSW", metric_type=METRIC, params=_HNSW_BUILD)
        else:
            index_params.add_index("vector", index_type="AUTOINDEX", metric_type=METRIC)
        return index_params

    def _create(self, name: str, dim: int) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, max_length=_ID_LENGTH, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("ext", DataType.VARCHAR, max_length=8)
        schema.add_field("metadata", DataType.JSON)
        try:
            try:
                self._client.create_collection(name, schema=schema, index_params=self._index_params())
            except MilvusException as error:
                leftover = self._lite_leftover(name, error)
                if leftover is None:
                    raise
                # An embedder killed while it created this collection left its folder behind, unknown to Milvus
                # Lite, which then refuses to create it ("File exists"). Nothing can use that folder: remove it.
                log.warning("removing %s, left by a create of collection %r that never finished", leftover, name)
                shutil.rmtree(leftover)
                self._client.create_collection(name, schema=schema, index_params=self._index_params())
            log.info("created Milvus collection %r (dim %d, %s)", name, dim, METRIC)
        except MilvusException as error:
            # Another embedder process created it first (server mode; a Lite file has one process): that is the
            # outcome we wanted, once its index is there too (ensure_collection waits for it). An exception from
            # this process that pymilvus wrapped is no answer from the server: it goes on up.
            if not self._is_server or _raised_in_this_process(error) or not self._client.has_collection(name):
                raise
            log.debug("collection %r appeared concurrently: %s", name, error)

    def _lite_leftover(self, name: str, error: MilvusException) -> Path | None:
        """The folder of a half-created Lite collection that `error` complains about, if that is what it is."""
        if self._lite_path is None or "File exists" not in str(error) or self._client.has_collection(name):
            return None
        folder = self._lite_path / "collections" / name
        return folder if folder.is_dir() else None

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        rows = self._client.get(name, ids=list(ids), output_fields=["id"])
        return {row["id"] for row in rows}

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        exts: Sequence[str],
        metadata: Sequence[dict[str, Any]],
    ) -> None:
        rows = [
            {"id": i, "vector": v.tolist(), "ext": e, "metadata": m}
            for i, v, e, m in zip(ids, vectors, exts, metadata, strict=True)
        ]
        self._client.upsert(name, rows)

    def search(self, name: str, vector: np.ndarray, limit: int, equalities: Mapping[str, FilterValue]) -> list[Hit]:
        return self.search_many(name, vector.reshape(1, -1), limit, equalities)[0]

    def search_many(
        self, name: str, vectors: np.ndarray, limit: int, equalities: Mapping[str, FilterValue]
    ) -> list[list[Hit]]:
        """The nearest rows for each of `vectors` (n, dim), in one Milvus call: the hits of each, best first."""
        expression = filter_expression(equalities)
        data = vectors.tolist()
        if self._is_server:
            # A server returns the JSON metadata with the hits at almost no cost (3.5 ms at 100k, HNSW).
            results = self._client.search(
                name,
                data=data,
                limit=limit,
                filter=expression,
                output_fields=["metadata"],
                search_params={"metric_type": METRIC, "params": {"ef": max(64, limit * 2)}},
            )
            return [[_hit(hit["id"], hit["distance"], hit["entity"]) for hit in hits] for hits in results]
        # Milvus Lite: ids and distances first, then the rows of all the hits at once. Asking its search for the
        # JSON metadata costs 3x the whole search (19 ms against 6.7 ms at 10k vectors).
        results = self._client.search(
            name, data=data, limit=limit, filter=expression, search_params={"metric_type": METRIC}
        )
        scores = [{str(hit["id"]): hit["distance"] for hit in hits} for hits in results]
        wanted = sorted({i for found in scores for i in found})
        if not wanted:
            return [[] for _ in scores]
        rows = {row["id"]: row for row in self._client.get(name, ids=wanted, output_fields=["metadata"])}
        # A row deleted between the two calls is dropped rather than returned without its image.
        return [[_hit(i, score, rows[i]) for i, score in found.items() if i in rows] for found in scores]

    def flush(self, name: str) -> None:
        """Seal what was inserted so it is indexed (a server flushes by itself; Lite must be told)."""
        if not self._is_server:
            self._client.flush(name)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self._client.delete(name, ids=list(ids))

    def count(self, name: str) -> int:
        # Strong consistency: on a server, another embedder's rows are otherwise invisible for a moment.
        rows = self._client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0
