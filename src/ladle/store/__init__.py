"""The model store: names, local models, pulls from the Ollama registry and Hugging Face.

    from ladle.store import Store, parse_model_name, pull

    store = Store()                                   # LADLE_HOME (default ~/.ladle)
    model = store.resolve("llama3.2")                 # LocalModel | None
    if model is None:
        model = pull(store, "llama3.2", print)        # progress: Ollama's /api/pull events
    model.model_path, model.template, model.params    # what a runner needs
    store.list_models()                               # [ModelInfo] (ladle's and Ollama's models)
    store.copy("llama3.2", "mine"); store.remove("mine")
    store.create("pirate", "FROM llama3.2\\nSYSTEM Arr.", base_dir=Path.cwd())

Modules: names (model references), layout (files on disk), manifest (Ollama's manifest format), store (the
Store), modelfile (Modelfile parser), details (what list shows), download (resumable verified downloads),
registry / hf (the two sources), pull (dispatch). Errors are in errors, each with a one-line message.
"""

from __future__ import annotations

from ladle.store.details import ModelDetails
from ladle.store.download import DownloadConfig
from ladle.store.errors import (
    InvalidModelName,
    ModelfileError,
    ModelNotFound,
    PullError,
    ReadOnlyModel,
    StoreError,
)
from ladle.store.modelfile import Modelfile, format_modelfile, parse_modelfile
from ladle.store.names import ModelName, parse_model_name
from ladle.store.pull import pull
from ladle.store.store import LocalModel, ModelInfo, Store

__all__ = [
    "DownloadConfig",
    "InvalidModelName",
    "LocalModel",
    "ModelDetails",
    "ModelInfo",
    "ModelName",
    "ModelNotFound",
    "Modelfile",
    "ModelfileError",
    "PullError",
    "ReadOnlyModel",
    "Store",
    "StoreError",
    "format_modelfile",
    "parse_model_name",
    "parse_modelfile",
    "pull",
]
