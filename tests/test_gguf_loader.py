"""load_gguf against independent readers: gguf.GGUFReader for the container, transformers' GGUF import
(modeling_gguf_pytorch_utils) for names, the llama Q/K un-permutation, the Gemma norm offset and the config."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.modeling_gguf_pytorch_utils import (
    TENSOR_PROCESSORS,
    TensorProcessor,
    get_gguf_hf_weights_map,
    load_gguf_checkpoint,
)

from gguf_support import gemma_path, stories_path
from ladle.loader.gguf_config import fit_llama3_rope_scaling
from ladle.loader.gguf_file import read_gguf
from ladle.loader.gguf_loader import GGUFError, load_gguf
from ladle.model.config import FULL_ATTENTION, SLIDING_ATTENTION, arch_config_from_hf
from ladle.quant.weight import GGMLWeight

Q = GGMLQuantizationType


def as_float(value: torch.Tensor | GGMLWeight) -> torch.Tensor:
    return value.dequantize() if isinstance(value, GGMLWeight) else value.float()


@pytest.fixture(scope="module")
def gemma_hf() -> tuple[GGUFReader, PretrainedConfig]:
    """One GGUFReader pass over the Gemma file (slow: a view per vocabulary entry), shared by the tests
    below, and transformers' config parsed from that same reader."""
    path = gemma_path()
    reader = GGUFReader(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", lambda *args, **kwargs: reader)
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    return reader, config


def check_container(path, reader: GGUFReader) -> None:
    ours = read_gguf(path)
    for key, f in reader.fields.items():
        if not key.startswith("GGUF."):
            assert ours.metadata[key] == f.contents(), key
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = ours.tensors[t.name]
        assert info.qtype == t.tensor_type
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
        assert ours.tensor_bytes(t.name).numpy().tobytes() == np.asarray(t.data).tobytes()


def test_container_matches_gguf_reader_stories() -> None:
    path = stories_path()
    check_container(path, GGUFReader(path))


def test_container_matches_gguf_reader_gemma(gemma_hf) -> None:
    check_container(gemma_path(), gemma_hf[0])


def hf_tensors(config: PretrainedConfig, path=None, tensors: dict[str, np.ndarray] | None = None) -> dict:
    """transformers' reading of GGUF tensors: HF name -> weights (un-permuted, norm-shifted). Either the
    whole file at `path`, or the given already dequantized GGUF tensors."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if tensors is None:
        return load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    kind = "gemma3" if config.model_type.startswith("gemma3") else config.model_type
    processor = TENSOR_PROCESSORS.get(kind, TensorProcessor)(config=config.to_dict())
    names = get_gguf_hf_weights_map(model, processor)
    out = {}
    for gguf_name, weights in tensors.items():
        result = processor.process(
            weights=weights,
            name=gguf_name,
            tensor_key_mapping=names,
            parsed_parameters={"config": config.to_dict()},
        )
        out[names[gguf_name]] = result.weights
    return out


def test_stories_weights_and_config_match_transformers() -> None:
    path = stories_path()
    ckpt = load_gguf(path)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    reference = hf_tensors(config, path)
    ours = dict(ckpt.weights())
    assert set(ours) == set(reference)
    for name, value in ours.items():
        assert torch.equal(as_float(value), torch.as_tensor(reference[name]).float()), name
    # Q and K really were un-permuted (the two layouts differ for this model).
    raw_q = read_gguf(path).tensor_bytes("blk.0.attn_q.weight").view(torch.float32)
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"], raw_q)

    expected = arch_config_from_hf(config.to_dict())
    cfg = ckpt.arch_config
    for field in (
        "family",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "hidden_act",
        "tie_word_embeddings",
        "max_position_embeddings",
        "rope",
        "layer_types",
        "bos_token_id",
    ):
        assert getattr(cfg, field) == getattr(expected, field), field
    assert cfg.eos_token_ids == [2]
    assert ckpt.in_memory_bytes() == sum(v.numel() * 4 for v in ours.values())


def test_gemma_config_matches_transformers(gemma_hf) -> None:
    cfg = load_gguf(gemma_path()).arch_config
    expected = arch_config_from_hf(gemma_hf[1].to_dict())
    for field in (
        "family",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "hidden_act",
        "qk_norm",
        "tie_word_embeddings",
        "rope",
        "local_rope",
        "sliding_window",
        "layer_types",
        "attention_scale",
        "final_logit_softcapping",
        "embedding_scale",
        "bos_token_id",
    ):
        assert getattr(cfg, field) == getattr(expected, field), field
    assert cfg.layer_types.count(FULL_ATTENTION) == 3 and cfg.layer_types[5] == FULL_ATTENTION
    assert cfg.layer_types[0] == SLIDING_ATTENTION and cfg.sliding_window == 512
    assert cfg.eos_token_ids == [
        1,
        106,
        212,
    ]  # <eos>, <end_of_turn> and </s>: llama.cpp's end-of-generation set


def test_gemma_weights_match_transformers(gemma_hf) -> None:
    """Layer 0, layer 5 (global attention) and the final norm, through transformers' Gemma processor (which
    also subtracts 1 from norms); the embedding stays quantized and must dequantize to the same values."""
    reader, config = gemma_hf
    wanted = [t for t in reader.tensors if t.name.startswith(("blk.0.", "blk.5.", "output_norm"))]
    raw = {t.name: quants.dequantize(np.asarray(t.data), t.tensor_type) for t in wanted}
    reference = hf_tensors(config, tensors=raw)
    ckpt = load_gguf(gemma_path())
    ours = dict(ckpt.weights())
    assert "lm_head.weight" not in ours and ckpt.arch_config.tie_word_embeddings
    for name, ref in reference.items():
        assert torch.equal(as_float(ours[name]), torch.from_numpy(np.asarray(ref)).float()), name
    embed = ours["model.embed_tokens.weight"]
    assert isinstance(embed, GGMLWeight) and embed.qtype == Q.Q8_0 and embed.shape == (262144, 640)
    rows = torch.tensor([0, 2, 106, 262143])
    token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    expected_rows = quants.dequantize(np.asarray(token_embd.data)[rows.numpy()], Q.Q8_0)
    assert torch.equal(embed.embedding(rows), torch.from_numpy(expected_rows))
    # Stays quantized in memory: the file is ~253 MB; norms (float32 after the offset) add ~100 KB.
    assert ckpt.in_memory_bytes() < 0.26e9


def test_llama3_rope_fit_matches_transformers() -> None:
    """Llama 3.1 files carry rope_freqs.weight; the fitted parameters must regenerate transformers' freqs."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=params)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float) / 128))
    rope_freqs = (plain / scaled).tolist()  # what convert_hf_to_gguf.py stores
    fitted = fit_llama3_rope_scaling(rope_freqs, 500000.0, 128)
    assert fitted == {k: v for k, v in params.items() if k != "rope_theta"}


# --- malformed files ------------------------------------------------------------------------------------


def write_tiny(path, arch: str = "llama", qtype: Q = Q.F32, drop_key: str | None = None) -> None:
    """A two-layer llama-shaped GGUF with random weights."""
    writer = GGUFWriter(str(path), arch)
    keys = {
        "context_length": 64,
        "embedding_length": 32,
        "block_count": 1,
        "feed_forward_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
    }
    for key, value in keys.items():
        if key != drop_key:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "\u2581", "a", "b"])  # no ids: llama.cpp's defaults apply
    writer.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0])
    writer.add_token_types([2, 3, 3, 1, 1, 1])
    rng = np.random.default_rng(0)

    def tensor(name: str, shape: tuple[int, ...]) -> None:
        values = rng.standard_normal(shape).astype(np.float32)
        if qtype == Q.F32 or len(shape) == 1:
            writer.add_tensor(name, values)
        else:
            packed = quants.quantize(values, qtype)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)

    tensor("token_embd.weight", (6, 32))
    tensor("output_norm.weight", (32,))
    for part, shape in {
        "attn_norm": (32,),
        "attn_q": (32, 32),
        "attn_k": (16, 32),
        "attn_v": (16, 32),
        "attn_output": (32, 32),
        "ffn_norm": (32,),
        "ffn_gate": (64, 32),
        "ffn_up": (64, 32),
        "ffn_down": (32, 64),
    }.items():
        tensor(f"blk.0.{part}.weight", shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def expect_error(path, pattern: str) -> None:
    with pytest.raises(GGUFError, match=pattern) as info:
        load_gguf(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_tiny_file_loads(tmp_path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny(path, qtype=Q.Q8_0)
    ckpt = load_gguf(path)
    weights = dict(ckpt.weights())
    assert isinstance(weights["model.layers.0.mlp.up_proj.weight"], GGMLWeight)
    assert ckpt.arch_config.tie_word_embeddings and ckpt.tokenizer.encode("ab") == [1, 3, 4, 5]
    assert ckpt.arch_config.bos_token_id == 1 and ckpt.arch_config.eos_token_ids == [2]


def test_error_not_gguf(tmp_path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    expect_error(path, "not a GGUF file")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    expect_error(empty, "cannot map|not a GGUF")


def test_error_truncated(tmp_path) -> None:
    source = tmp_path / "tiny.gguf"
    write_tiny(source)
    data = source.read_bytes()
    for cut, pattern in ((200, "truncated or corrupt header"), (len(data) - 100, "truncated: tensor")):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        expect_error(path, pattern)


def test_error_corrupt_metadata(tmp_path) -> None:
    source = tmp_path / "tiny.gguf"
    write_tiny(source)
    data = bytearray(source.read_bytes())
    # The first key-value pair starts at byte 24: u64 key length, the key, then the u32 value type.
    key_len = int.from_bytes(data[24:32], "little")
    data[32 + key_len : 36 + key_len] = (99).to_bytes(4, "little")
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(bytes(data))
    expect_error(path, "unknown value type 99")
    data = bytearray(source.read_bytes())
    data[4:8] = (7).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    expect_error(path, "unsupported GGUF version 7")


def test_error_unknown_architecture(tmp_path) -> None:
    path = tmp_path / "mamba.gguf"
    write_tiny(path, arch="mamba")
    expect_error(path, "unsupported architecture 'mamba'")


def test_error_unsupported_tensor_type(tmp_path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny(path, qtype=Q.Q8_0)
    data = bytearray(path.read_bytes())
    # Rewrite the type id of blk.0.attn_q.weight (u32 after its dims) from Q8_0 to IQ4_NL (same block size).
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8
    assert int.from_bytes(data[at : at + 4], "little") == Q.Q8_0
    data[at : at + 4] = int(Q.IQ4_NL).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    expect_error(path, "'blk.0.attn_q.weight' has type IQ4_NL")
    data[at : at + 4] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    expect_error(path, "unknown GGML type id 99")


def test_error_missing_key(tmp_path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny(path, drop_key="embedding_length")
    expect_error(path, "missing metadata key 'llama.embedding_length'")
