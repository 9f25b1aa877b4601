"""The local store: create from a Modelfile, list, resolve, cp, rm, and Ollama's store read-only.

Expected values come from the files themselves (sha256 of stories260K.gguf, its GGUF metadata as MODELS.md
documents it) and from Ollama's on-disk layout, not from ladle's earlier output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from ladle.store import (
    InvalidModelName,
    ModelfileError,
    ModelNotFound,
    ReadOnlyModel,
    Store,
    StoreError,
)
from shared_models import stories_gguf  # noqa: E402

STORIES = stories_gguf()
STORIES_SHA = "df6110e8a14bc1f37df65300abd555aea68ea0534e8916091c0fc9613a74df28"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ladle", ollama_dirs=[])


def modelfile(extra: str = "") -> str:
    return f"FROM {STORIES}\n{extra}"


def blob_names(store: Store) -> set[str]:
    return {p.name for p in store.layout.blobs.iterdir() if p.is_file()}


def test_create_from_gguf_resolve_and_list(store: Store) -> None:
    events: list[dict] = []
    text = modelfile(
        'TEMPLATE """{{ .System }} {{ .Prompt }}"""\n'
        "PARAMETER temperature 0.25\nPARAMETER stop </s>\nPARAMETER stop END\n"
        "SYSTEM Tell short stories.\nMESSAGE user Hi\nMESSAGE assistant Once upon a time\nLICENSE MIT\n"
    )
    model = store.create("stories", text, progress=events.append)

    assert events[0] == {"status": "gathering model components"}
    assert events[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    assert model.format == "gguf"
    assert model.model_path == store.layout.blobs / f"sha256-{STORIES_SHA}"
    assert hashlib.sha256(model.model_path.read_bytes()).hexdigest() == STORIES_SHA
    assert model.template == "{{ .System }} {{ .Prompt }}"
    assert model.system == "Tell short stories."
    assert model.params == {"temperature": 0.25, "stop": ["</s>", "END"]}
    assert model.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Once upon a time"},
    ]
    assert model.license == "MIT"

    # Ollama's layout: the manifest path, blob names, media types.
    manifest_file = store.home / "models/manifests/registry.ollama.ai/library/stories/latest"
    manifest = json.loads(manifest_file.read_bytes())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.ollama.image.model",
        "application/vnd.ollama.image.template",
        "application/vnd.ollama.image.params",
        "application/vnd.ollama.image.system",
        "application/vnd.ollama.image.messages",
        "application/vnd.ollama.image.license",
    }
    for layer in [*manifest["layers"], manifest["config"]]:
        blob = store.layout.blobs / layer["digest"].replace(":", "-")
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"].split(":")[1]
        assert blob.stat().st_size == layer["size"]

    # `show --modelfile` output builds the same model again.
    rebuilt = store.create("rebuilt", model.to_modelfile())
    assert rebuilt.model_path == model.model_path
    assert (rebuilt.template, rebuilt.system, rebuilt.params) == (model.template, model.system, model.params)
    assert (rebuilt.messages, rebuilt.licenses) == (model.messages, model.licenses)
    store.remove("rebuilt")

    [row] = store.list_models()
    assert row.name == row.model == "stories:latest"
    assert row.full_name == "registry.ollama.ai/library/stories:latest"
    assert row.digest == hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    assert row.size == sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
    assert row.source == "ladle"
    # From the GGUF metadata: llama, all tensors F32 (file_type 0), 292,800 weights.
    assert row.details.format == "gguf"
    assert row.details.family == "llama"
    assert row.details.families == ["llama"]
    assert row.details.quantization_level == "F32"
    assert row.details.parameter_size == "293K"


def test_create_with_relative_path_and_base_dir(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(STORIES, work / "tiny.gguf")
    model = store.create("tiny:v1", "FROM ./tiny.gguf\n", base_dir=work)
    assert model.name.full == "registry.ollama.ai/library/tiny:v1"
    assert model.template is None and model.params == {}
    # A folder holding one GGUF works too.
    assert store.create("tiny:v2", "FROM work\n", base_dir=tmp_path).model_path == model.model_path


def test_create_from_a_model_inherits_layers_and_merges_parameters(store: Store) -> None:
    store.create("base", modelfile('TEMPLATE T\nSYSTEM old\nPARAMETER temperature 0.5\nPARAMETER stop "A"\n'))
    before = blob_names(store)
    child = store.create("child", "FROM base\nSYSTEM new\nPARAMETER top_k 7\nPARAMETER temperature 0.9\n")
    assert child.template == "T"
    assert child.system == "new"
    assert child.params == {"temperature": 0.9, "stop": ["A"], "top_k": 7}
    assert child.model_path == store.resolve("base").model_path  # the weights are shared, not copied
    assert child.details.parent_model == "base:latest"
    assert child.details.family == "llama"
    # New blobs: the system text, the merged params, the config. Nothing else.
    assert len(blob_names(store) - before) == 3


def test_copy_and_remove_keep_blobs_other_models_use(store: Store) -> None:
    store.create("a", modelfile("SYSTEM only-a\n"))
    b = store.create("b", "FROM a\nSYSTEM only-b\n")
    copied = store.copy("a", "me/c")
    assert str(copied) == "me/c:latest"
    assert store.resolve("me/c").digest == store.resolve("a").digest  # cp keeps the manifest, so the ID
    system_a = store.resolve("a").manifest.layers_of("application/vnd.ollama.image.system")[0].digest

    assert str(store.remove("a")) == "a:latest"
    assert store.resolve("a") is None
    assert store.layout.blob_path(system_a).exists()  # me/c still uses it
    store.remove("me/c")
    assert not store.layout.blob_path(system_a).exists()  # now nothing does
    assert b.model_path.exists()  # b still needs the weights
    assert not (store.layout.manifests / "registry.ollama.ai/me").exists()  # empty folders pruned

    store.remove("b")
    assert store.list_models() == []
    assert blob_names(store) == set()
    with pytest.raises(ModelNotFound, match="model 'b' not found"):
        store.remove("b")
    with pytest.raises(ModelNotFound):
        store.copy("nothing", "x")


def test_bare_org_repo_finds_a_local_registry_model(store: Store) -> None:
    store.create("me/thing", modelfile())  # a new local name: me/thing:latest
    assert store.qualify("me/thing").full == "registry.ollama.ai/me/thing:latest"
    assert store.resolve("me/thing").name.full == "registry.ollama.ai/me/thing:latest"
    assert store.qualify("other/repo").kind == "hf-repo"  # nothing local: a Hugging Face repository


def test_names_resolve_case_insensitively(store: Store) -> None:
    store.create("Stories:Big", modelfile())
    assert store.resolve("stories:big").name.full == "registry.ollama.ai/library/Stories:Big"


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("FROM x\nADAPTER ./lora.gguf\n", ModelfileError, "line 2: ADAPTER: adapters are not supported yet"),
        ("FROM no-such-model\n", ModelfileError, "FROM no-such-model: model not found"),
        ("FROM ./missing.gguf\n", ModelfileError, "no such file or folder"),
        (f"FROM {STORIES.parent / 'MODELS.md'}\n", ModelfileError, "not a GGUF file"),
        (modelfile("PARAMETER num_ctx big\n"), ModelfileError, "invalid int value"),
        ("SYSTEM hi\n", ModelfileError, "no FROM line"),
    ],
)
def test_create_errors_leave_nothing_behind(store: Store, text: str, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        store.create("broken", text, base_dir=Path("/tmp"))
    assert fragment in str(info.value)
    assert store.list_models() == []


def test_create_rejects_bad_names(store: Store) -> None:
    for bad in ("../x", "", "x" * 300):
        with pytest.raises(InvalidModelName):
            store.create(bad, modelfile())
    assert not store.layout.manifests.exists()


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], bytes]]) -> None:
    header, offset = {}, 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(d for _, d in tensors.values()))


def make_hf_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    write_safetensors(folder / "model.safetensors", {"w": ([2, 3], bytes(24)), "b": ([3], bytes(12))})
    (folder / "pytorch_model.bin").write_bytes(b"not wanted")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling/config.json").write_text("{}")
    (folder / ".git").mkdir()
    (folder / ".git/config").write_text("x")


def test_create_from_a_safetensors_folder(store: Store, tmp_path: Path) -> None:
    make_hf_folder(tmp_path / "hf")
    model = store.create("tiny-st", f"FROM {tmp_path / 'hf'}\nSYSTEM s\n")
    assert model.format == "safetensors"
    assert model.model_path.is_dir()
    names = sorted(
        p.relative_to(model.model_path).as_posix() for p in model.model_path.rglob("*") if p.is_file()
    )
    assert names == ["1_Pooling/config.json", "config.json", "model.safetensors", "tokenizer.json"]
    for name in names:
        assert (model.model_path / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
    assert model.system == "s"
    [row] = store.list_models()
    assert (row.details.format, row.details.family, row.details.parameter_size) == (
        "safetensors",
        "llama",
        "9",
    )
    assert row.details.quantization_level == "F32"

    # The folder view is rebuilt when missing, and goes away with the last manifest that uses it.
    shutil.rmtree(model.model_path)
    assert store.resolve("tiny-st").model_path.is_dir()
    store.copy("tiny-st", "tiny-copy")
    store.remove("tiny-st")
    assert model.model_path.is_dir()
    store.remove("tiny-copy")
    assert not model.model_path.exists()
    assert blob_names(store) == set()


def test_a_model_with_a_missing_blob_is_not_listed(store: Store) -> None:
    model = store.create("stories", modelfile())
    model.model_path.unlink()
    assert store.list_models() == []
    with pytest.raises(StoreError, match="incomplete"):
        store.resolve("stories")


def make_ollama_store(root: Path) -> Path:
    """An Ollama store as Ollama writes it: blobs/sha256-<hex>, manifests/<host>/<ns>/<name>/<tag>."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layers = [
        blob(STORIES.read_bytes(), "application/vnd.ollama.image.model"),
        blob(b"{{ .Prompt }}", "application/vnd.ollama.image.template"),
        blob(b'{"num_ctx":256}', "application/vnd.ollama.image.params"),
    ]
    config = blob(
        b'{"model_format":"gguf","model_family":"llama"}', "application/vnd.docker.container.image.v1+json"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config,
        "layers": layers,
    }
    path = root / "manifests/registry.ollama.ai/library/from-ollama/latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_ollama_store_is_listed_and_used_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ollama = make_ollama_store(tmp_path / "ollama" / "models")
    before = snapshot(ollama)
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama))
    store = Store(tmp_path / "ladle")  # finds Ollama's store through OLLAMA_MODELS

    [row] = store.list_models()
    assert (row.name, row.source) == ("from-ollama:latest", "ollama")
    # The config lacks the quantization: it comes from the GGUF.
    assert (row.details.family, row.details.quantization_level) == ("llama", "F32")
    model = store.resolve("from-ollama")
    assert model.source == "ollama"
    assert model.model_path.parent == ollama / "blobs"
    assert (model.template, model.params) == ("{{ .Prompt }}", {"num_ctx": 256})

    with pytest.raises(ReadOnlyModel, match="ollama rm"):
        store.remove("from-ollama")
    mine = store.copy("from-ollama", "mine")
    assert store.resolve(mine).source == "ladle"
    assert store.resolve(mine).model_path.parent == store.layout.blobs
    child = store.create("child", "FROM from-ollama\nSYSTEM hi\n")
    assert child.source == "ladle" and child.template == "{{ .Prompt }}"
    assert {r.name for r in store.list_models()} == {"from-ollama:latest", "mine:latest", "child:latest"}
    assert snapshot(ollama) == before  # ladle never writes there
