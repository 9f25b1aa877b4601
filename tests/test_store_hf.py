"""Pulls from a loopback Hugging Face Hub (tests/hf_server.py) through huggingface_hub."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from hf_server import HfServer
from ladle.store import DownloadConfig, PullError, Store, pull
from registry_server import STORIES, sha256

GGUF = STORIES.read_bytes()
GGUF_DIGEST = sha256(GGUF)
FAST = DownloadConfig(backoff_base=0.01, max_retries=2, connect_timeout=2, read_timeout=5)


def safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [16, 32], "data_offsets": [0, 2048]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(256)) * 8


WEIGHTS = safetensors_bytes()
CONFIG = json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}).encode()
TOKENIZER = b'{"version": "1.0", "model": {"type": "BPE"}}'


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    with HfServer() as server:
        server.add_repo(
            "tiny/stories-GGUF",
            {
                "README.md": b"# stories",
                "stories-Q4_K_M.gguf": GGUF,
                "stories-Q8_0.gguf": GGUF,
                "mmproj-stories-F16.gguf": GGUF,
            },
        )
        server.add_repo("tiny/single-GGUF", {"model.gguf": GGUF})
        server.add_repo(
            "tiny/stories-st",
            {
                "config.json": CONFIG,
                "tokenizer.json": TOKENIZER,
                "model.safetensors": WEIGHTS,
                "README.md": b"# readme",
                "pytorch_model.bin": b"pickled weights",
            },
        )
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ladle", ollama_dirs=[])


def resolved_files(hub: HfServer) -> list[str]:
    return [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]


def test_pull_gguf_picks_q4_k_m_by_default(hub: HfServer, store: Store) -> None:
    events: list[dict] = []
    model = pull(store, "hf.co/tiny/stories-GGUF", events.append, config=FAST)
    assert model.name.full == "hf.co/tiny/stories-GGUF:latest"
    assert model.format == "gguf"
    assert model.model_path.read_bytes() == GGUF
    assert model.template is None  # the chat template inside the GGUF is the one to use
    assert [p.rsplit("/", 1)[1] for p in resolved_files(hub)] == ["stories-Q4_K_M.gguf"]
    assert any(path.startswith("/api/models/tiny/stories-GGUF") for _, path, _ in hub.requests)

    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert events[-4] == {
        "status": f"pulling {GGUF_DIGEST[7:19]}",
        "digest": GGUF_DIGEST,
        "total": len(GGUF),
        "completed": len(GGUF),
    }
    [row] = store.list_models()
    assert row.name == "hf.co/tiny/stories-GGUF:latest"
    assert (row.details.format, row.details.family, row.details.quantization_level) == (
        "gguf",
        "llama",
        "F32",
    )
    assert store.resolve("hf.co/tiny/stories-GGUF").digest == model.digest


def test_pull_gguf_with_an_explicit_quant_matches_case_insensitively(hub: HfServer, store: Store) -> None:
    model = pull(store, "hf.co/tiny/stories-GGUF:q8_0", config=FAST)
    assert model.name.tag == "q8_0"
    assert [p.rsplit("/", 1)[1] for p in resolved_files(hub)] == ["stories-Q8_0.gguf"]
    assert store.resolve("hf.co/tiny/stories-GGUF:Q8_0") is not None


def test_pull_gguf_sole_file(hub: HfServer, store: Store) -> None:
    assert pull(store, "hf.co/tiny/single-GGUF", config=FAST).model_path.read_bytes() == GGUF


def test_pull_gguf_unknown_quant_lists_the_available_ones(hub: HfServer, store: Store) -> None:
    with pytest.raises(PullError) as info:
        pull(store, "hf.co/tiny/stories-GGUF:Q4_K", config=FAST)
    assert str(info.value) == "hf.co/tiny/stories-GGUF has no Q4_K GGUF file; available: Q4_K_M, Q8_0"
    assert store.list_models() == []


def test_pull_gguf_resumes_after_a_cut(hub: HfServer, store: Store) -> None:
    key = "tiny/stories-GGUF/stories-Q4_K_M.gguf"
    hub.cut_after[key] = [400_000]
    with pytest.raises(PullError):
        pull(store, "hf.co/tiny/stories-GGUF", config=DownloadConfig(max_retries=0))
    assert store.list_models() == []
    model = pull(store, "hf.co/tiny/stories-GGUF", config=FAST)
    assert model.model_path.read_bytes() == GGUF
    assert hub.bytes_sent[key] == len(GGUF)


def test_pull_gguf_corrupt_download_is_rejected(hub: HfServer, store: Store) -> None:
    hub.corrupt.add("tiny/stories-GGUF/stories-Q4_K_M.gguf")
    with pytest.raises(PullError, match="digest mismatch"):
        pull(store, "hf.co/tiny/stories-GGUF", config=FAST)
    assert store.list_models() == []
    assert not store.blob_path(GGUF_DIGEST).exists()


def test_pull_safetensors_repository(hub: HfServer, store: Store) -> None:
    events: list[dict] = []
    model = pull(store, "tiny/stories-st", events.append, config=FAST)
    assert model.name.full == "huggingface.co/tiny/stories-st:main"
    assert model.format == "safetensors"
    folder = model.model_path
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / "config.json").read_bytes() == CONFIG
    assert (folder / "tokenizer.json").read_bytes() == TOKENIZER
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert [e["status"] for e in events][-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert {e.get("digest") for e in events} >= {sha256(WEIGHTS)}

    [row] = store.list_models()
    assert row.name == "tiny/stories-st"
    assert (row.details.format, row.details.family, row.details.parameter_size) == (
        "safetensors",
        "llama",
        "512",
    )
    assert row.details.quantization_level == "BF16"
    assert store.resolve("tiny/stories-st").model_path == folder
    assert store.resolve("huggingface.co/tiny/stories-st").model_path == folder
    # The staging folder is gone; pulling again does not fetch the weights again.
    assert not any(store.layout.downloads.rglob("*.safetensors"))
    sent = hub.bytes_sent["tiny/stories-st/model.safetensors"]
    pull(store, "tiny/stories-st", config=FAST)
    assert hub.bytes_sent["tiny/stories-st/model.safetensors"] == sent


def test_pull_safetensors_corrupt_small_file_is_rejected(hub: HfServer, store: Store) -> None:
    hub.corrupt.add("tiny/stories-st/config.json")
    with pytest.raises(PullError, match="config.json is corrupt"):
        pull(store, "tiny/stories-st", config=FAST)
    assert store.list_models() == []


def test_wrong_kind_of_repository_says_what_to_pull(hub: HfServer, store: Store) -> None:
    with pytest.raises(
        PullError, match="has no safetensors weights but has GGUF files: pull hf.co/tiny/single-GGUF"
    ):
        pull(store, "tiny/single-GGUF", config=FAST)
    with pytest.raises(PullError, match="has no GGUF files; for safetensors weights pull tiny/stories-st"):
        pull(store, "hf.co/tiny/stories-st", config=FAST)


def test_missing_repository(hub: HfServer, store: Store) -> None:
    with pytest.raises(PullError) as info:
        pull(store, "hf.co/tiny/nope", config=FAST)
    assert str(info.value) == "Hugging Face repository tiny/nope not found (if it is private, set HF_TOKEN)"


def test_unreachable_hub(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(PullError) as info:
        pull(store, "hf.co/tiny/stories-GGUF", config=FAST)
    assert str(info.value).startswith(f"cannot reach Hugging Face at http://127.0.0.1:{port}: ")
    assert "\n" not in str(info.value)


def test_pull_gguf_that_is_not_in_lfs(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without an LFS sha256 to check against, huggingface_hub fetches the file and its git blob id is checked.
    with HfServer(lfs_threshold=10**9) as hub:
        hub.add_repo("tiny/plain-GGUF", {"plain-Q4_K_M.gguf": GGUF})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        events: list[dict] = []
        model = pull(store, "hf.co/tiny/plain-GGUF", events.append, config=FAST)
    assert model.model_path.read_bytes() == GGUF
    assert ("HEAD", "/tiny/plain-GGUF/resolve/") in {
        (m, p[: len("/tiny/plain-GGUF/resolve/")]) for m, p, _ in hub.requests
    }
    assert events[-1] == {"status": "success"}
    assert any(e.get("completed") == len(GGUF) for e in events)
    assert not any(store.layout.downloads.rglob("*.gguf"))
