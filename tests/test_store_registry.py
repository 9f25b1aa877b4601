"""Pulls from a loopback Ollama-style registry (tests/registry_server.py), faults included."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from ladle.store import DownloadConfig, PullError, Store, pull
from registry_server import MODEL, PARAMS, STORIES, TEMPLATE, RegistryServer, sha256

STORIES_DIGEST = sha256(STORIES.read_bytes())
SIZE = STORIES.stat().st_size
# Quick retries so the fault tests stay fast; the defaults are Ollama's (1 s doubling, 6 tries).
FAST = DownloadConfig(backoff_base=0.01, max_retries=3, connect_timeout=2, read_timeout=5)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    with RegistryServer() as server:
        server.manifest = server.add_model("stories")
        monkeypatch.setenv("LADLE_REGISTRY", server.url)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ladle", ollama_dirs=[])


def test_pull_writes_blobs_and_manifest_and_reports_like_ollama(
    registry: RegistryServer, store: Store
) -> None:
    events: list[dict] = []
    model = pull(store, "stories", events.append, config=FAST)

    assert model.model_path.read_bytes() == STORIES.read_bytes()
    assert model.template == "{{ .System }}\n{{ .Prompt }}"
    assert model.params == {"temperature": 0.5, "stop": ["</s>"]}
    assert model.digest == sha256(registry.manifest)  # the manifest is stored byte for byte
    assert registry.bytes_sent[STORIES_DIGEST] == SIZE

    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    model_events = [e for e in events if e.get("digest") == STORIES_DIGEST]
    assert model_events[0]["status"] == f"pulling {STORIES_DIGEST[7:19]}"
    assert model_events[-1] == {
        "status": f"pulling {STORIES_DIGEST[7:19]}",
        "digest": STORIES_DIGEST,
        "total": SIZE,
        "completed": SIZE,
    }
    completed = [e["completed"] for e in model_events]
    assert completed == sorted(completed)

    [row] = store.list_models()
    assert row.name == "stories:latest"
    assert row.digest == hashlib.sha256(registry.manifest).hexdigest()
    # The registry's config blob is where Ollama's details come from.
    assert (row.details.family, row.details.parameter_size, row.details.quantization_level) == (
        "llama",
        "260K",
        "F32",
    )
    # No partial files or download state left behind.
    assert sorted(p.name for p in store.layout.blobs.iterdir() if "partial" in p.name) == []

    # Pulling again downloads nothing: every blob is reported complete at once.
    sent = sum(registry.bytes_sent.values())
    again: list[dict] = []
    pull(store, "stories", again.append, config=FAST)
    assert sum(registry.bytes_sent.values()) == sent
    assert {"status": "success"} in again


def test_pull_follows_blob_redirects(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with RegistryServer(redirect_blobs=True) as server:
        server.add_model("stories")
        monkeypatch.setenv("LADLE_REGISTRY", server.url)
        model = pull(store, "stories", config=FAST)
    assert model.model_path.read_bytes() == STORIES.read_bytes()
    assert any(path.startswith("/cdn/") for _, path, _ in server.requests)


def test_cut_off_blob_resumes_within_the_pull(registry: RegistryServer, store: Store) -> None:
    registry.cut_after[STORIES_DIGEST] = [300_000, 400_000]
    model = pull(store, "stories", config=FAST)
    assert model.model_path.read_bytes() == STORIES.read_bytes()
    # Every byte crossed the wire once: the retries asked only for what was missing.
    assert registry.bytes_sent[STORIES_DIGEST] == SIZE
    ranges = [r for _, path, r in registry.requests if path.endswith(STORIES_DIGEST)]
    assert ranges == [f"bytes=0-{SIZE - 1}", f"bytes=300000-{SIZE - 1}", f"bytes=700000-{SIZE - 1}"]


def test_cut_off_pull_resumes_in_the_next_pull(registry: RegistryServer, store: Store) -> None:
    registry.cut_after[STORIES_DIGEST] = [500_000]
    with pytest.raises(PullError) as info:
        pull(store, "stories", config=DownloadConfig(max_retries=0))
    assert "\n" not in str(info.value)
    # Nothing is listed, and what arrived is kept for the next pull.
    assert store.list_models() == []
    assert store.resolve("stories") is None
    assert store.layout.partial_path(STORIES_DIGEST).exists()
    state = json.loads(Path(str(store.layout.partial_path(STORIES_DIGEST)) + ".json").read_text())
    assert state["parts"][0]["completed"] == 500_000

    model = pull(store, "stories", config=FAST)
    assert model.model_path.read_bytes() == STORIES.read_bytes()
    assert registry.bytes_sent[STORIES_DIGEST] == SIZE
    assert not store.layout.partial_path(STORIES_DIGEST).exists()


def test_parallel_parts_resume_each_part(registry: RegistryServer, store: Store) -> None:
    # 1,185,536 bytes / 16 parts is under the 100,000-byte minimum: twelve parts of 100,000 bytes.
    parts = DownloadConfig(min_part_size=100_000, backoff_base=0.01, max_retries=0)
    registry.cut_after[STORIES_DIGEST] = [50_000, 50_000, 50_000]
    with pytest.raises(PullError):
        pull(store, "stories", config=parts)
    state = json.loads(Path(str(store.layout.partial_path(STORIES_DIGEST)) + ".json").read_text())
    assert [(p["offset"], p["size"]) for p in state["parts"]] == [
        (n * 100_000, min(100_000, SIZE - n * 100_000)) for n in range(12)
    ]
    arrived = sum(p["completed"] for p in state["parts"])
    assert 0 < arrived < SIZE
    first = registry.bytes_sent[STORIES_DIGEST]

    model = pull(store, "stories", config=DownloadConfig(min_part_size=100_000, backoff_base=0.01))
    assert model.model_path.read_bytes() == STORIES.read_bytes()
    # The second pull asked only for the bytes that had not arrived.
    assert registry.bytes_sent[STORIES_DIGEST] - first == SIZE - arrived
    starts = {
        r.split("=")[1].split("-")[0] for _, p, r in registry.requests if p.endswith(STORIES_DIGEST) and r
    }
    assert {str(n * 100_000) for n in range(12)} <= starts


def test_corrupt_blob_is_rejected_and_nothing_is_listed(registry: RegistryServer, store: Store) -> None:
    registry.corrupt.add(STORIES_DIGEST)
    events: list[dict] = []
    with pytest.raises(PullError) as info:
        pull(store, "stories", events.append, config=FAST)
    message = str(info.value)
    assert f"digest mismatch for {STORIES_DIGEST}" in message and "\n" not in message
    assert {"status": "writing manifest"} not in events
    assert store.list_models() == []
    assert not store.layout.blob_path(STORIES_DIGEST).exists()
    # The corrupt bytes are thrown away, so the next pull starts over instead of resuming them.
    assert not store.layout.partial_path(STORIES_DIGEST).exists()
    registry.corrupt.clear()
    assert pull(store, "stories", config=FAST).model_path.read_bytes() == STORIES.read_bytes()


def test_server_errors_are_retried(registry: RegistryServer, store: Store) -> None:
    registry.fail_next["manifest"] = [503, 502]
    registry.fail_next[STORIES_DIGEST] = [500, 503]
    assert pull(store, "stories", config=FAST).model_path.read_bytes() == STORIES.read_bytes()


def test_server_errors_give_up_after_the_retries(registry: RegistryServer, store: Store) -> None:
    registry.fail_next[STORIES_DIGEST] = [503] * 10
    with pytest.raises(PullError, match=f"download of {STORIES_DIGEST} failed: the server answered HTTP 503"):
        pull(store, "stories", config=FAST)
    assert store.list_models() == []


def test_unknown_model_is_a_clear_error(registry: RegistryServer, store: Store) -> None:
    with pytest.raises(PullError) as info:
        pull(store, "nope:7b", config=FAST)
    assert (
        str(info.value) == f"pull model manifest: model 'nope:7b' not found in the registry at {registry.url}"
    )


def test_unreachable_registry_is_a_clear_error(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LADLE_REGISTRY", f"http://127.0.0.1:{port}")
    with pytest.raises(PullError) as info:
        pull(store, "stories", config=FAST)
    assert str(info.value) == f"cannot reach the registry at http://127.0.0.1:{port}: connection refused"


def test_namespaced_models_and_shared_blobs(registry: RegistryServer, store: Store) -> None:
    registry.add_model(
        "pirate",
        "v1",
        [(MODEL, STORIES.read_bytes()), (TEMPLATE, b"arr {{ .Prompt }}"), (PARAMS, b'{"top_k":1}')],
        namespace="someone",
    )
    pull(store, "stories", config=FAST)
    sent = registry.bytes_sent[STORIES_DIGEST]
    model = pull(store, "someone/pirate:v1", config=FAST)
    assert registry.bytes_sent[STORIES_DIGEST] == sent  # the weights were already there
    assert model.template == "arr {{ .Prompt }}"
    assert {r.name for r in store.list_models()} == {"stories:latest", "someone/pirate:v1"}
    # A bare ns/name finds the local registry model before trying Hugging Face.
    assert store.resolve("someone/pirate") is None  # only :v1 exists, not :latest
    store.remove("stories")
    assert store.resolve("someone/pirate:v1").model_path.exists()


def test_pull_links_blobs_from_ollamas_store(registry: RegistryServer, tmp_path: Path) -> None:
    ollama = tmp_path / "ollama"
    (ollama / "blobs").mkdir(parents=True)
    (ollama / "blobs" / STORIES_DIGEST.replace(":", "-")).write_bytes(STORIES.read_bytes())
    store = Store(tmp_path / "ladle", ollama_dirs=[ollama])
    model = pull(store, "stories", config=FAST)
    assert registry.bytes_sent[STORIES_DIGEST] == 0
    assert model.model_path.read_bytes() == STORIES.read_bytes()
    assert model.source == "ladle"


def test_concurrent_pulls_of_one_model_download_it_once(registry: RegistryServer, store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        models = list(pool.map(lambda _: pull(store, "stories", config=FAST), range(3)))
    assert {m.digest for m in models} == {sha256(registry.manifest)}
    assert registry.bytes_sent[STORIES_DIGEST] == SIZE
    assert [r.name for r in store.list_models()] == ["stories:latest"]
