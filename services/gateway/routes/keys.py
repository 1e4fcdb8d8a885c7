"""`/v1/keys`: API keys over HTTP, for admin keys (the same operations as `mmrag keys`)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.api_keys import ApiKey, Scope
from services.gateway.api_contract import problems
from services.gateway.auth import AUTH_RESPONSES, AdminAccess
from services.gateway.state import StateDep

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=AUTH_RESPONSES)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique; 1–64 letters, digits, '.', '_' or '-'")
    scopes: list[Scope] = Field(min_length=1, description="search, index and/or admin")
    rate: str | None = Field(default=None, description="N/second or N/minute; null: no limit", examples=["10/second"])
    collections: list[str] | None = Field(default=None, description="the only collections it may use; null: all")


class KeyCreated(ApiKey):
    key: str = Field(description="the secret: shown this once, stored nowhere")


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    responses=problems({400: "The name is taken, or a field is not valid"}),
    summary="Create a key; the answer holds its secret, shown this once",
)
async def create_key(body: KeyCreate, state: StateDep, _principal: AdminAccess) -> KeyCreated:
    secret, key = await state.keys.create(body.name, body.scopes, rate=body.rate, collections=body.collections)
    return KeyCreated(**key.model_dump(), key=secret)


@router.get("", response_model=list[ApiKey], summary="Every key: names, scopes, rates, created and last used")
async def list_keys(state: StateDep, _principal: AdminAccess) -> list[ApiKey]:
    return await state.keys.list()


@router.delete(
    "/{name}",
    status_code=204,
    response_class=Response,
    responses=problems({404: "No key has this name"}),
    summary="Revoke a key: it stops working within 5 s on every gateway",
)
async def revoke_key(name: str, state: StateDep, _principal: AdminAccess) -> Response:
    await state.keys.revoke(name)
    state.authenticator.forget(name)
    return Response(status_code=204)
