"""Loading fails early, with a message that names the problem: before any weights are read or work starts."""

from __future__ import annotations

import json
import shutil

import pytest

from ladle import LLM
from ladle.loader.checkpoint import open_checkpoint


@pytest.fixture()
def model_copy(tiny_model_factory, tmp_path):
    folder, _ = tiny_model_factory("llama")
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def test_unknown_architecture_lists_the_supported_ones(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"FalconForCausalLM.*LlamaForCausalLM"):
        open_checkpoint(model_copy)


def test_missing_weights_and_config(model_copy, tmp_path):
    for f in model_copy.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        LLM(str(model_copy))
    (model_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        LLM(str(model_copy))
    with pytest.raises(FileNotFoundError, match="not found"):
        LLM(str(tmp_path / "nowhere"))


def test_missing_tokenizer(model_copy):
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        LLM(str(model_copy))


def test_truncated_checkpoint_names_missing_weights(model_copy):
    from safetensors.torch import load_file, save_file

    (weights,) = model_copy.glob("*.safetensors")
    tensors = load_file(str(weights))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing 1 weights: model.layers.1.mlp.up_proj.weight"):
        LLM(str(model_copy))


def test_bad_dtype_device_and_context(model_copy):
    with pytest.raises(ValueError, match="dtype"):
        LLM(str(model_copy), dtype="float8")
    with pytest.raises(ValueError, match="device"):
        LLM(str(model_copy), device="tpu")
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(str(model_copy), max_model_len=100_000)
    for bad in (0, -5):  # 0 used to mean "the model's length", -5 made every prompt "too long"
        with pytest.raises(ValueError, match="max_model_len"):
            LLM(str(model_copy), max_model_len=bad)
