"""Turning a search request (multipart or JSON) into validated parameters, before anything is queued."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile

from services.common.collections import validate_collection_name
from services.common.errors import InvalidRequest, PayloadTooLarge
from services.common.filters import FilterValue, filter_problem
from services.common.json_limits import JsonLimitError, loads_checked
from services.common.media import IMAGE_ID_PATTERN
from services.common.settings import Settings

MAX_LIMIT = 50
MAX_FORM_FIELD_BYTES = 16 * 1024 * 1024


class SearchRequestBody(BaseModel):
    """A search as JSON; the multipart form carries the same fields, with `image` as a file part."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str | None = Field(default=None, description="the query image, base64-encoded")
    image_id: str | None = Field(default=None, description="an indexed image id: 'more like this'")
    instruction: str | None = Field(default=None, description="what to change or look for")
    limit: int = Field(default=9, ge=1, le=MAX_LIMIT)
    min_score: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,
        description="cosine similarity (-1 to 1) below which candidates are dropped, before any rerank",
    )
    rerank: bool = True
    collection: str = "default"
    filter: dict[str, FilterValue] | None = Field(default=None, description="metadata equalities")

    @field_validator("image_id")
    @classmethod
    def _image_id_shape(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_ID_PATTERN.match(value):
            raise ValueError("must be the 64-character lowercase hex sha256 of an indexed image")
        return value

    @field_validator("min_score", mode="before")
    @classmethod
    def _min_score_is_a_number(cls, value: Any) -> Any:
        # JSON true would otherwise pass as 1.0.
        if isinstance(value, bool):
            raise ValueError("must be a number from -1 to 1 (a cosine similarity)")
        return value

    @field_validator("filter")
    @classmethod
    def _filter_is_expressible(cls, value: dict[str, FilterValue] | None) -> dict[str, FilterValue] | None:
        problem = filter_problem(value or {})
        if problem is not None:
            raise ValueError(problem)
        return value


@dataclass(frozen=True)
class SearchRequest:
    body: SearchRequestBody
    image: bytes | None


def _raise_invalid(error: ValidationError) -> None:
    errors = [
        {"field": ".".join(str(p) for p in item["loc"]) or "body", "message": item["msg"]} for item in error.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    raise InvalidRequest(detail, extra={"errors": errors}) from None


async def _read_limited(upload: UploadFile, limit: int, what: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"{what} is larger than {limit / 1024 / 1024:g} MB (MMRAG_MAX_UPLOAD_MB): send a smaller file"
        )
    return data


def _form_value(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise InvalidRequest(f"field '{name}' must be a plain form field, not a file")
    return str(value)


async def parse_search_request(request: Request, settings: Settings) -> SearchRequest:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        # Bounded while it is received (body_limits.py): never more than one base64 image and small fields.
        raw = await request.body()
        try:
            body = SearchRequestBody.model_validate_json(raw)
        except ValidationError as error:
            _raise_invalid(error)
        image = None
        if body.image_base64 is not None:
            try:
                image = base64.b64decode(body.image_base64, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest("image_base64 is not valid base64") from None
            if len(image) > settings.max_upload_bytes:
                raise PayloadTooLarge(f"the image is larger than {settings.max_upload_mb:g} MB (MMRAG_MAX_UPLOAD_MB)")
    elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=16, max_part_size=MAX_FORM_FIELD_BYTES)
        unknown = set(form.keys()) - {
            "image",
            "image_id",
            "instruction",
            "limit",
            "min_score",
            "rerank",
            "collection",
            "filter",
        }
        if unknown:
            raise InvalidRequest(f"unknown form fields: {', '.join(sorted(unknown))}")
        upload = form.get("image")
        image = None
        if upload is not None:
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("field 'image' must be a file part (or send JSON with image_base64)")
            image = await _read_limited(upload, settings.max_upload_bytes, "the image")
        fields: dict[str, Any] = {
            name: _form_value(form.get(name), name)
            for name in ("image_id", "instruction", "limit", "min_score", "rerank", "collection")
            if form.get(name) is not None
        }
        raw_filter = _form_value(form.get("filter"), "filter")
        if raw_filter:
            try:
                fields["filter"] = loads_checked(raw_filter)
            except JsonLimitError as error:
                raise InvalidRequest(
                    f'filter must be a JSON object such as {{"category": "phone case"}}: {error}'
                ) from None
        try:
            body = SearchRequestBody.model_validate(fields)
        except ValidationError as error:
            _raise_invalid(error)
    else:
        raise InvalidRequest(
            f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with an 'image' "
            "file (or only an 'instruction'), or application/json with image_base64 (or only an instruction)"
        )

    if body.instruction is not None:
        body = body.model_copy(update={"instruction": body.instruction.strip() or None})
    if image is not None and body.image_id is not None:
        raise InvalidRequest("send one query image: an 'image' file (or image_base64), or an 'image_id', not both")
    if image is None and body.image_id is None and not body.instruction:
        raise InvalidRequest(
            "nothing to search with: send an 'image' file (or image_base64), or an 'image_id', and an optional "
            "'instruction'; or an 'instruction' alone for a text-only search"
        )
    if body.instruction and len(body.instruction) > settings.max_instruction_chars:
        raise InvalidRequest(
            f"the instruction is {len(body.instruction):,} characters; the limit is "
            f"{settings.max_instruction_chars:,} (MMRAG_MAX_INSTRUCTION_CHARS)"
        )
    validate_collection_name(body.collection)
    return SearchRequest(body=body, image=image)
