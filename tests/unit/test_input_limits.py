"""The pure parts of the abuse limits (issue 17): JSON depth and Unicode, metadata sizes, duplicate filenames, exact
name and id patterns, body limits derived from the settings, the collection cap, and secrets kept out of printed
URLs and setting errors."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis

from services.common.api_keys import validate_key_name
from services.common.collections import (
    AsyncCollectionRegistry,
    CollectionRegistry,
    new_collection_info,
    validate_collection_name,
)
from services.common.errors import InvalidRequest
from services.common.filters import filter_problem
from services.common.json_limits import MAX_JSON_DEPTH, JsonLimitError, json_problem, loads_checked
from services.common.media import IMAGE_ID_PATTERN
from services.common.metadata import MetadataError, parse_metadata_lines
from services.common.redaction import redact_url
from services.common.settings import ConfigurationError, Settings, load_settings
from services.gateway.body_limits import JSON_BODY_LIMIT, body_limit
from services.gateway.index_upload import refuse_duplicate_filenames

PASSWORD = "hunter2-correct-horse"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 900, 100_000])
def test_json_nested_past_the_limit_is_refused_at_any_depth(depth: int) -> None:
    # 900 still parses (it failed later, on the way into Redis); 100,000 exceeds the parser's own recursion limit.
    with pytest.raises(JsonLimitError, match=f"more than {MAX_JSON_DEPTH} levels"):
        loads_checked(_nested(depth))


def test_json_at_the_limit_is_accepted() -> None:
    assert loads_checked(_nested(MAX_JSON_DEPTH)) is not None


@pytest.mark.parametrize("text", ['"\\ud800"', '{"a": ["x\\udfff"]}', '{"\\udc00": 1}'])
def test_a_lone_surrogate_is_refused(text: str) -> None:
    with pytest.raises(JsonLimitError, match="not valid Unicode"):
        loads_checked(text)
    # A pair is one character, and fine.
    assert json_problem(json.loads('"\\ud83d\\ude00"')) is None


def test_a_filter_value_with_a_lone_surrogate_is_not_expressible() -> None:
    problem = filter_problem({"title": json.loads('"\\ud800"')})
    assert problem is not None and "not valid Unicode" in problem


def test_metadata_past_the_item_limit_is_refused_naming_file_line_and_setting() -> None:
    big = json.dumps({"filename": "a.png", "title": "x" * 1_000_000})
    with pytest.raises(MetadataError) as raised:
        parse_metadata_lines(f'{{"filename": "b.png"}}\n{big}\n', max_item_bytes=8192)
    assert raised.value.line == 2 and raised.value.too_large
    assert "'a.png'" in raised.value.reason and "MMRAG_MAX_METADATA_BYTES" in raised.value.reason


def test_metadata_size_counts_compact_json_without_the_filename() -> None:
    line = json.dumps({"filename": "a.png" * 100, "t": "x" * 100}, separators=(" ,  ", " :  "))
    assert parse_metadata_lines(line, max_item_bytes=len('{"t":""}') + 100) == {"a.png" * 100: {"t": "x" * 100}}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"filename": "a.png", "x": ' + _nested(900) + "}", "levels deep"),
        ('{"filename": "a.png", "title": "\\ud800"}', "not valid Unicode"),
        ('{"filename": "\\ud800.png"}', "not valid Unicode"),
    ],
    ids=["depth 900", "surrogate in a value", "surrogate in the filename"],
)
def test_metadata_that_could_not_be_stored_is_refused_when_parsed(line: str, reason: str) -> None:
    with pytest.raises(MetadataError, match=reason):
        parse_metadata_lines(line)


def test_duplicate_filenames_are_refused_naming_them() -> None:
    with pytest.raises(InvalidRequest) as raised:
        refuse_duplicate_filenames(["a.png"] * 1000 + ["b.png", "c.png", "c.png"])
    assert "'a.png' (1,000 times)" in raised.value.detail and "'c.png' (2 times)" in raised.value.detail
    assert raised.value.extra["duplicates"] == ["a.png", "c.png"]
    refuse_duplicate_filenames(["a.png", "b.png"])  # distinct names pass


@pytest.mark.parametrize("name", ["evil\n", "evil\r\n", "ok\x00", "é", "a" * 64, "1abc", ""])
def test_collection_names_must_match_exactly(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_collection_name(name)


def test_ids_and_key_names_must_match_exactly() -> None:
    assert validate_collection_name("evil") == "evil"
    assert IMAGE_ID_PATTERN.fullmatch("a" * 64) and not IMAGE_ID_PATTERN.match("a" * 64 + "\n")
    with pytest.raises(InvalidRequest):
        validate_key_name("shop\n")


def test_body_limits_follow_the_settings() -> None:
    settings = Settings(max_upload_mb=2, max_index_files=3, max_metadata_mb=1)
    upload = body_limit(settings, "POST", "/v1/collections/products/images", "multipart/form-data; boundary=x")
    # Three files of 2 MB and 1 MB of metadata fit; the slack is small beside them.
    assert 7 * 2**20 <= upload.max_bytes <= 7 * 2**20 + 2 * 2**20
    assert "MMRAG_MAX_INDEX_FILES" in upload.explanation
    search = body_limit(settings, "POST", "/v1/searches", "application/json")
    assert 2 * 2**20 * 4 / 3 <= search.max_bytes <= 2 * 2**20 * 4 / 3 + 2 * 2**20  # a 2 MB image in base64
    for method, path in [("POST", "/v1/keys"), ("GET", "/v1/jobs/x"), ("POST", "/v1/collections/a/b/images")]:
        assert body_limit(settings, method, path, "application/json").max_bytes == JSON_BODY_LIMIT


def test_the_collection_cap_counts_reserved_names_until_they_lapse(redis_url: str, redis_client: redis.Redis) -> None:
    registry = CollectionRegistry(redis_client)
    registry.create_if_absent(new_collection_info("existing", dim=8, model="m"))

    async def reserve(name: str, ttl_s: float = 60) -> bool:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await AsyncCollectionRegistry(client).reserve(name, max_collections=3, ttl_s=ttl_s)
        finally:
            await client.aclose()

    async def scenario() -> list[bool]:
        return [
            await reserve("existing"),  # registered: always allowed
            await reserve("new_a"),  # 2 of 3
            await reserve("new_b"),  # 3 of 3
            await reserve("new_c"),  # a fourth: refused
            await reserve("new_a"),  # reserved already: allowed again
        ]

    assert asyncio.run(scenario()) == [True, True, True, False, True]
    # Once the embedder registers a reserved name it counts once, as registered.
    registry.create_if_absent(new_collection_info("new_b", dim=8, model="m"))
    assert asyncio.run(reserve("new_c")) is False
    # A reservation that lapsed (its job long gone) frees its place.
    redis_client.zadd("mmrag:collections:reserved", {"new_a": 0})
    assert asyncio.run(reserve("new_c")) is True


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:6390/0",
        f"redis://default:{PASSWORD}@redis:6379/0",
        f"redis://redis:6379/0?password={PASSWORD}",
        f"unix://:{PASSWORD}@/run/redis.sock?db=0",
        f"http://root:{PASSWORD}@milvus:19530",
    ],
)
def test_printed_urls_keep_no_password(url: str) -> None:
    shown = redact_url(url)
    assert PASSWORD not in shown and "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]  # the rest stays readable


def test_a_bad_setting_names_the_variable_without_printing_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_REDIS_URL", f"http://:{PASSWORD}@redis:6379/0")  # a wrong scheme
    monkeypatch.setenv("MMRAG_BOOTSTRAP_ADMIN_KEY", PASSWORD)  # too short
    load_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError) as raised:
            load_settings()
    finally:
        load_settings.cache_clear()
    message = str(raised.value)
    assert "MMRAG_REDIS_URL" in message and "redis:6379" in message
    assert "MMRAG_BOOTSTRAP_ADMIN_KEY" in message
    assert PASSWORD not in message
