"""GGUF metadata -> ArchConfig, and GGUF tensor names -> Hugging Face names.

One table, GGUF_ARCHITECTURES, says everything that differs between architectures; supporting another
one means adding an entry (and, if it needs one, a `configure` hook for its extra metadata).

llama.cpp conventions undone here, so ladle's model code sees Hugging Face semantics:
- llama: convert_hf_to_gguf.py permutes the rows of Q and K within each head from the rotate-half layout
  (first half of the head, then second half) to interleaved pairs (ggml's "normal" rope). `permute_qk`
  marks architectures whose loader must apply the inverse permutation (`unpermute_rows`).
- gemma3: its converter stores RMSNorm weights as (w + 1), because ggml's rms_norm multiplies by the weight
  and Gemma's multiplies by (1 + w). The loader subtracts `norm_offset` = 1.0 from every `*norm.weight`
  (input, post-attention, pre/post-feedforward, q_norm, k_norm and final norm), in float32: for stored
  values in [0.5, 2] the subtraction is exact, so 1 + w in the model reproduces the file's value exactly.
- gemma3: GGUF files do not carry the sliding-window layer pattern, the local rope base or
  query_pre_attn_scalar unless the converter was told to; llama.cpp hard-codes the same defaults used here
  (every 6th layer global, local base 10,000, scalar = head_dim except hidden/heads for the 62-layer 27B).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ladle.model.config import FULL_ATTENTION, SLIDING_ATTENTION, ArchConfig, RopeConfig

# GGUF per-layer tensor name -> Hugging Face name under model.layers.{i}.
_COMMON_LAYER_TENSORS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

Metadata = dict[str, Any]


@dataclass(frozen=True)
class GGUFArchitecture:
    family: str  # ArchConfig.family: the ladle model module that runs it
    hf_architecture: str  # ArchConfig.architecture (the Hugging Face class name), for messages
    layer_tensors: dict[str, str]
    hidden_act: str = "silu"
    permute_qk: bool = False
    norm_offset: float = 0.0
    qk_norm: bool = False
    # Arch-specific metadata -> extra ArchConfig fields (sliding windows, scales, ...).
    configure: Callable[[Metadata, str, dict[str, Any]], dict[str, Any]] | None = None
    ignored_tensors: frozenset[str] = field(default_factory=frozenset)

    def hf_name(self, gguf_name: str) -> str | None:
        """The Hugging Face name of a GGUF tensor, or None for tensors ladle does not load."""
        if gguf_name in _GLOBAL_TENSORS:
            return _GLOBAL_TENSORS[gguf_name]
        parts = gguf_name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in self.layer_tensors:
            return f"model.layers.{parts[1]}.{self.layer_tensors[parts[2]]}"
        return None


def _configure_gemma3(meta: Metadata, arch: str, base: dict[str, Any]) -> dict[str, Any]:
    layers, head_dim = base["num_hidden_layers"], base["head_dim"]
    window = meta.get(f"{arch}.attention.sliding_window")
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 6)
    if not window:
        layer_types = [FULL_ATTENTION] * layers
    elif isinstance(pattern, list):  # per-layer flags: true = sliding
        layer_types = [SLIDING_ATTENTION if p else FULL_ATTENTION for p in pattern]
    else:
        layer_types = [SLIDING_ATTENTION if (i + 1) % int(pattern) else FULL_ATTENTION for i in range(layers)]
    if layers == 62:  # Gemma 3 27B: query_pre_attn_scalar = hidden_size / num_heads (gemma_pytorch config)
        scalar = base["hidden_size"] / base["num_attention_heads"]
    else:
        scalar = float(meta.get(f"{arch}.attention.query_pre_attn_scalar", head_dim))
    softcap = meta.get(f"{arch}.final_logit_softcapping")
    return dict(
        sliding_window=int(window) if window else None,
        layer_types=layer_types,
        local_rope=RopeConfig(theta=float(meta.get(f"{arch}.rope.freq_base_swa", 10000.0))),
        attention_scale=scalar**-0.5,
        final_logit_softcapping=float(softcap) if softcap else None,
        embedding_scale=base["hidden_size"] ** 0.5,
    )


GGUF_ARCHITECTURES: dict[str, GGUFArchitecture] = {
    # Llama 1/2/3, Mistral (same GGUF arch name, sliding window absent), TinyLlama, llama2.c models.
    "llama": GGUFArchitecture(
        family="llama",
        hf_architecture="LlamaForCausalLM",
        layer_tensors={**_COMMON_LAYER_TENSORS, "ffn_norm.weight": "post_attention_layernorm.weight"},
        permute_qk=True,
        ignored_tensors=frozenset({"rope_freqs.weight"}),  # read into ArchConfig.rope instead
    ),
    "gemma3": GGUFArchitecture(
        family="gemma3",
        hf_architecture="Gemma3ForCausalLM",
        layer_tensors={
            **_COMMON_LAYER_TENSORS,
            "post_attention_norm.weight": "post_attention_layernorm.weight",
            "ffn_norm.weight": "pre_feedforward_layernorm.weight",
            "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
        },
        hidden_act="gelu_pytorch_tanh",
        norm_offset=1.0,
        qk_norm=True,
        configure=_configure_gemma3,
    ),
}


def _get(meta: Metadata, key: str, default: Any = None, required: bool = False) -> Any:
    if key in meta:
        return meta[key]
    if required:
        raise KeyError(key)
    return default


def _rope_scaling(
    meta: Metadata, arch: str, rope_freqs: list[float] | None, theta: float, head_dim: int
) -> dict[str, Any] | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if rope_freqs is not None:
        return fit_llama3_rope_scaling(rope_freqs, theta, head_dim)
    if kind in (None, "none") or not factor:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
        orig = meta.get(f"{arch}.rope.scaling.original_context_length")
        if orig:
            scaling["original_max_position_embeddings"] = int(orig)
        return scaling
    raise ValueError(f"rope scaling type {kind!r} is not supported")


def fit_llama3_rope_scaling(rope_freqs: list[float], theta: float, head_dim: int) -> dict[str, Any]:
    """Llama 3.1+ GGUFs store the rope frequency divisors as a tensor (rope_freqs.weight) instead of the
    parameters that made them. Recover the Hugging Face `llama3` parameters by trying the published ones
    and keeping the set that reproduces the tensor."""
    factor = max(rope_freqs)
    inv_freq = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    for original in (8192, 4096, 16384, 32768, 2048, 131072):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)):
            low_wavelen, high_wavelen = original / low, original / high
            ok = True
            for f, div in zip(inv_freq, rope_freqs, strict=False):
                wavelen = 2 * math.pi / f
                if wavelen < high_wavelen:
                    expected = 1.0
                elif wavelen > low_wavelen:
                    expected = factor
                else:
                    smooth = (original / wavelen - low) / (high - low)
                    expected = 1 / ((1 - smooth) / factor + smooth)
                if abs(expected - div) > 1e-3 * max(1.0, div):
                    ok = False
                    break
            if ok:
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": original,
                }
    raise ValueError("rope_freqs.weight does not match llama3 rope scaling with any published parameters")


def special_token_id(meta: Metadata, name: str) -> int | None:
    """tokenizer.ggml.{name}_token_id, with llama.cpp's defaults for SentencePiece vocabularies
    (unk 0, bos 1, eos 2) when the key is absent; None when unset or out of range."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    value = meta.get(f"tokenizer.ggml.{name}_token_id")
    if value is None and meta.get("tokenizer.ggml.model") == "llama":
        value = {"unknown": 0, "bos": 1, "eos": 2}.get(name)
    return int(value) if value is not None and 0 <= int(value) < len(tokens) else None


# Token texts llama.cpp treats as end-of-generation (and as control tokens) whatever the file's token types
# say: chat models rarely mark their end-of-turn token in the metadata (llama-vocab.cpp, "special_eog_ids").
_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<\uff5cend\u2581of\u2581sentence\uff5c>",
        "[e~[",
    }
)


def eos_token_ids(meta: Metadata, tokens: list[str] | None) -> list[int]:
    """End-of-generation ids as llama.cpp computes them: eos/eot/eom (and FIM pad/rep/sep) ids from the
    metadata plus every token whose text is in _EOG_TEXTS, with llama.cpp's two exceptions (<|end|> is not
    final in harmony-style vocabularies; </s> is a normal token when <|tool_response> or <|plamo:eos|> exist).
    The eos id comes first."""
    ids: list[int] = []
    for name in ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep"):
        value = special_token_id(meta, name)
        if value is not None and value not in ids:
            ids.append(value)
    if not tokens:
        return ids
    present = {t: i for i, t in enumerate(tokens) if t in _EOG_TEXTS or t in ("<|plamo:eos|>",)}
    texts = set(present)
    if "<|end|>" in texts and ({"<|return|>", "<|call|>"} <= texts or {"<|calls|>", "<|flush|>"} <= texts):
        texts.discard("<|end|>")
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        texts.discard("</s>")
    texts.discard("<|plamo:eos|>")
    ids.extend(sorted(present[t] for t in texts if present[t] not in ids))
    return ids


def arch_config_from_gguf(
    meta: Metadata,
    rope_freqs: list[float] | None = None,
    has_output: bool = True,
    vocab_size: int | None = None,
) -> ArchConfig:
    """Builds an ArchConfig; raises KeyError (a missing required key) or ValueError (unsupported)."""
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        supported = ", ".join(sorted(GGUF_ARCHITECTURES))
        raise ValueError(f"unsupported architecture {arch!r}; ladle reads GGUF architectures: {supported}")
    spec = GGUF_ARCHITECTURES[arch]
    hidden = int(_get(meta, f"{arch}.embedding_length", required=True))
    heads = int(_get(meta, f"{arch}.attention.head_count", required=True))
    kv_heads = _get(meta, f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        if len(set(kv_heads)) != 1:
            raise ValueError("per-layer KV head counts are not supported")
        kv_heads = kv_heads[0]
    head_dim = int(_get(meta, f"{arch}.attention.key_length", hidden // heads))
    rope_dims = int(_get(meta, f"{arch}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported")
    if vocab_size is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab_size = int(_get(meta, f"{arch}.vocab_size", len(tokens) if tokens else 0))
    theta = float(_get(meta, f"{arch}.rope.freq_base", 10000.0))
    base: dict[str, Any] = dict(
        family=spec.family,
        architecture=spec.hf_architecture,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(_get(meta, f"{arch}.feed_forward_length", required=True)),
        num_hidden_layers=int(_get(meta, f"{arch}.block_count", required=True)),
        num_attention_heads=heads,
        num_key_value_heads=int(kv_heads),
        head_dim=head_dim,
        rms_norm_eps=float(_get(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        hidden_act=spec.hidden_act,
        qk_norm=spec.qk_norm,
        tie_word_embeddings=not has_output,
        max_position_embeddings=int(_get(meta, f"{arch}.context_length", 4096)),
        rope=RopeConfig(
            theta=theta,
            scaling=_rope_scaling(meta, arch, rope_freqs, theta, head_dim),
            freq_factors=list(rope_freqs) if rope_freqs is not None else None,
        ),
        bos_token_id=special_token_id(meta, "bos"),
        eos_token_ids=eos_token_ids(meta, meta.get("tokenizer.ggml.tokens")),
        torch_dtype=None,
    )
    if spec.family == "llama":
        window = meta.get(f"{arch}.attention.sliding_window")
        base["sliding_window"] = int(window) if window else None
    if spec.configure is not None:
        base.update(spec.configure(meta, arch, base))
    return ArchConfig(**base)


def unpermute_rows(n_rows: int, n_heads: int) -> list[int]:
    """Row order that undoes llama.cpp's Q/K permutation: HF row r of a head (r < d/2: first half, else
    second half) sits at GGUF row 2*(r mod d/2) + (r div d/2)."""
    head_dim = n_rows // n_heads
    half = head_dim // 2
    order = []
    for h in range(n_heads):
        for r in range(head_dim):
            order.append(h * head_dim + 2 * (r % half) + r // half)
    return order
