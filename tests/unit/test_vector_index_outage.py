"""A Milvus server that does not answer makes the vector index fail fast as `unavailable`, never hang."""

from __future__ import annotations

import time

import pytest

from services.common.errors import ProblemType
from services.embedder.index import VectorIndex, VectorIndexUnavailable
from tests.support.processes import free_port


def test_a_milvus_server_that_is_down_is_unavailable_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(VectorIndexUnavailable) as raised:
        # Nothing listens on this loopback port: without a timeout pymilvus would retry for minutes.
        VectorIndex(f"http://127.0.0.1:{free_port()}", is_server=True, timeout_s=1.5)
    assert time.monotonic() - started < 15
    assert raised.value.problem_type is ProblemType.UNAVAILABLE
    assert "Milvus" in raised.value.detail
