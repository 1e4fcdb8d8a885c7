"""Collections as the embedder sees them: created on first use, guarded against a change of model."""

from __future__ import annotations

from services.common.collections import CollectionInfo, new_collection_info
from services.common.errors import InvalidRequest, NotFound
from services.embedder.resources import Resources


def _check_model(info: CollectionInfo, model_name: str, dim: int) -> None:
    if info.model != model_name or info.dim != dim:
        raise InvalidRequest(
            f"collection {info.name!r} holds {info.model} vectors ({info.dim}-d) but this embedder runs "
            f"{model_name} ({dim}-d): use another collection, or run the embedder with MMRAG_MODEL={info.model}"
        )


def generation(info: CollectionInfo) -> str:
    """One life of a collection: a collection dropped and made again under the same name is another one."""
    return info.created_at.isoformat()


def open_for_search(resources: Resources, name: str) -> CollectionInfo:
    model = resources.require_model()
    info = resources.collections.get(name)
    if info is None or not resources.index.open(name, generation(info)):
        raise NotFound(f"collection {name!r} does not exist: index images into it first")
    _check_model(info, model.model_name, model.dim)
    return info


def open_for_indexing(resources: Resources, name: str) -> CollectionInfo:
    model = resources.require_model()
    info = resources.collections.get(name)
    if info is None:
        info = resources.collections.create_if_absent(new_collection_info(name, dim=model.dim, model=model.model_name))
    _check_model(info, model.model_name, model.dim)
    resources.index.ensure_collection(name, model.dim, generation(info))
    return info


def refresh_count(resources: Resources, info: CollectionInfo) -> None:
    resources.collections.put(info.model_copy(update={"count": resources.index.count(info.name)}))
