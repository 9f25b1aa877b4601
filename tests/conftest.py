from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import ARCHITECTURES, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_model_stores(tmp_path_factory):
    """No test reads or writes the machine's own stores: ladle's (~/.ladle) and Ollama's (~/.ollama) are
    empty session folders unless a test points LADLE_HOME or OLLAMA_MODELS elsewhere itself."""
    root = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LADLE_HOME", str(root / "ladle-home"))
        (root / "ollama").mkdir()
        patch.setenv("OLLAMA_MODELS", str(root / "ollama"))
        yield root


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Builds each tiny model once per test session; returns (folder, transformers model)."""
    cache: dict[str, tuple[Path, object]] = {}

    def get(kind: str):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            cache[kind] = (folder, build_tiny_model(kind, folder))
        return cache[kind]

    return get


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny_model(request, tiny_model_factory):
    folder, model = tiny_model_factory(request.param)
    return request.param, folder, model


# The server tests' fixtures: a `ladle serve` subprocess shared by the session, and transformers on the same
# folder as the reference its output is checked against.
from hf_reference import hf_reference  # noqa: E402, F401
from server_helpers import ladle_server  # noqa: E402, F401
