"""The models this server answers for without pulling anything: every model in the local store, loaded or not
(what `ladle list` shows), then the models loaded from a path. GET /api/tags and GET /v1/models list these,
each in its own API's shape, so the two listings can never disagree. Nothing here loads a model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ladle.models_hub.manager import LoadedModel, ModelManager
from ladle.store import ModelInfo


@dataclass(frozen=True)
class ServedModel:
    name: str  # the id clients use: the store's shortest name, or the path as it was given
    stored: ModelInfo | None  # the store's row; None for a model loaded from a path
    loaded: LoadedModel | None  # None while it is not in memory


def _fold(name: str) -> str:
    # Store names are case-insensitive, as Ollama's (the store dedups its rows the same way).
    return name.lower()


async def served_models(manager: ModelManager) -> list[ServedModel]:
    """The store's models (newest first), then the models loaded from a path; each model once."""
    rows = await asyncio.to_thread(manager.store.list_models)  # reads manifests: keep it off the loop
    loaded = manager.loaded()
    by_name = {_fold(m.name): m for m in loaded}
    served = [ServedModel(row.name, row, by_name.get(_fold(row.name))) for row in rows]
    listed = {_fold(row.name) for row in rows}
    # A model loaded from the store but no longer listed (removed, its manifest damaged) is on its way
    # out; only the ones loaded from a path are served without a store row.
    served += [
        ServedModel(m.name, None, m) for m in loaded if m.local is None and _fold(m.name) not in listed
    ]
    return served


async def find_served(manager: ModelManager, reference: str) -> ServedModel | None:
    """The served model a reference names (`demo` is `demo:latest`, as in a request's model field), or None.
    Found in the same listing as served_models gives, so what is listed can be retrieved and nothing else."""
    try:
        key = _fold(manager.key(reference))
    except ValueError:  # InvalidModelName: a name that can never resolve is simply not served
        return None
    return next((s for s in await served_models(manager) if _fold(s.name) == key), None)
