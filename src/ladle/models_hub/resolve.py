"""Turns a user's model reference into something the loader can open (see INTERFACES.md, model references).

    resolve_model("stories")            # ResolvedModel(name="stories:latest", path=<blob>, local=LocalModel)
    resolve_model("/models/x.gguf")     # ResolvedModel(name="/models/x.gguf", path=..., local=None)
    resolve_model_path("stories")       # just the path (LLM(model=...) uses this)

Order: an existing path wins; then something that looks like a path but is missing is an error; then the
special name `demo` (models_hub/demo.py stores it from the `demo` extra on first use); then a store name (`name[:tag]`, `hf.co/org/repo[:quant]`,
`org/repo`), pulled when missing unless `pull_missing=False` (the HTTP server's choice: a request naming
a model that is not there answers 404, as Ollama's does; `ladle run` and `/api/pull` pull explicitly).

Errors: FileNotFoundError (no such path), InvalidModelName (a ValueError), ModelNotFound (a LookupError),
PullError, StoreError. Every message is one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ladle.store import LocalModel, Store

DEMO_NAME = "demo"


@dataclass
class ResolvedModel:
    """What a model reference points at. `name` is the id the server shows: the canonical store name
    (`stories:latest`) for store models, the reference as given for paths."""

    name: str
    path: str
    local: LocalModel | None = None  # the store's model (template, params, system, licenses), if any


def path_exists(model: str) -> bool:
    """Whether `model` names an existing file or folder (False for names no file system can hold)."""
    if not model:
        return False
    try:
        return Path(model).expanduser().exists()
    except (OSError, ValueError):  # too long, NUL bytes
        return False


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~", ".\\")) or model.endswith(".gguf") or "\\" in model


def model_key(model: str, store: Store | None = None) -> str:
    """The id a reference is served under, without touching the network: `stories` and `stories:latest` are
    one model. Raises InvalidModelName for a name that can never resolve."""
    if path_exists(model) or looks_like_path(model):
        return model
    from ladle.store import Store

    return str((store or Store()).qualify(model))


def resolve_model(
    model: str,
    *,
    store: Store | None = None,
    pull_missing: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ResolvedModel:
    """Resolve `model` (see the module docstring); `progress` receives /api/pull events if it pulls."""
    if path_exists(model):
        return ResolvedModel(name=model, path=str(Path(model).expanduser()))
    if looks_like_path(model):
        raise FileNotFoundError(f"model {model!r} not found: no such file or folder")
    if model in (DEMO_NAME, f"{DEMO_NAME}:latest"):
        return _resolve_demo(store)

    from ladle.store import ModelNotFound, Store, pull

    store = store or Store()
    name = store.qualify(model)  # InvalidModelName for a bad name
    local = store.resolve(name)
    if local is None:
        if not pull_missing:
            raise ModelNotFound(f"model '{model}' not found, try pulling it first")
        local = pull(store, name, progress)
    return ResolvedModel(name=str(local.name), path=str(local.model_path), local=local)


def resolve_model_path(model: str) -> str:
    """The file or folder to load for `model`, pulling a store name when missing (LLM(model=...))."""
    return resolve_model(model).path


def _resolve_demo(store: Store | None) -> ResolvedModel:
    """The offline demo model (models_hub/demo.py): stored on first use from the `demo` extra's package."""
    from ladle.models_hub.demo import DemoNotInstalled, ensure_demo_model
    from ladle.store import ModelNotFound, Store

    try:
        local = ensure_demo_model(store or Store())
    except DemoNotInstalled as exc:
        raise ModelNotFound(f"model 'demo' not found: {exc}") from None
    return ResolvedModel(name=str(local.name), path=str(local.model_path), local=local)
