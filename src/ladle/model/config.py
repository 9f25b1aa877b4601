"""ArchConfig: one normalized description of a decoder-only model, whatever file format it came from.

Hugging Face config.json files (transformers 4.x `rope_scaling`/`rope_theta` and 5.x `rope_parameters`) and
GGUF metadata (loader/gguf_config.py) are both translated into this, so a model class reads one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Hugging Face `architectures[0]` -> ladle model family (the module in ladle/model/ that builds it).
HF_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


@dataclass
class RopeConfig:
    theta: float = 10000.0
    # None, or a dict as in config.json: {"rope_type": "llama3"|"linear"|"default", "factor": ..., ...}
    scaling: dict[str, Any] | None = None
    # GGUF's rope_freqs.weight (llama3 scaling): the per-pair divisors ggml applies to each angle, kept as
    # stored so the ggml numerics path (model/ggml_cpu.py) uses them instead of refitted parameters.
    freq_factors: list[float] | None = None


@dataclass
class ArchConfig:
    family: str  # "llama" or "gemma3"
    architecture: str  # the name the file gave, e.g. "Qwen3ForCausalLM", for messages
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"  # "silu" (SwiGLU) or "gelu_pytorch_tanh" (GeGLU)
    attention_bias: bool = False  # Qwen2: bias on q/k/v
    qk_norm: bool = False  # Qwen3 and Gemma 3: RMSNorm over each head of q and k
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    rope: RopeConfig = field(default_factory=RopeConfig)
    # Rope for sliding-window layers when it differs (Gemma 3 uses base 10k locally, 1M globally).
    local_rope: RopeConfig | None = None
    sliding_window: int | None = None
    layer_types: list[str] = field(default_factory=list)  # per layer: FULL_ATTENTION or SLIDING_ATTENTION
    attention_scale: float | None = None  # None: 1/sqrt(head_dim)
    final_logit_softcapping: float | None = None
    embedding_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(hidden_size)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str | None = None  # the dtype the weights were published in
    # "torch": transformers' numerics (the model's torch layers); "ggml": llama.cpp's CPU numerics through
    # the native layer ops (model/ggml_cpu.py), set by load_model for GGUF files run on the CPU.
    numerics: str = "torch"

    def __post_init__(self) -> None:
        if not self.layer_types:
            kind = SLIDING_ATTENTION if self.sliding_window else FULL_ATTENTION
            self.layer_types = [kind] * self.num_hidden_layers

    def rope_for_layer(self, layer: int) -> RopeConfig:
        if self.layer_types[layer] == SLIDING_ATTENTION and self.local_rope is not None:
            return self.local_rope
        return self.rope

    def window_for_layer(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == SLIDING_ATTENTION else None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _rope_from_hf(params: dict[str, Any] | None, theta: float, scaling: dict[str, Any] | None) -> RopeConfig:
    """Reads both the transformers-5 `rope_parameters` form and the older `rope_theta` + `rope_scaling`."""
    if params:
        params = dict(params)
        theta = float(params.pop("rope_theta", theta))
        kind = params.get("rope_type", params.get("type", "default"))
        return RopeConfig(theta=theta, scaling=None if kind == "default" else params)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        return RopeConfig(theta=theta, scaling=None if kind == "default" else dict(scaling))
    return RopeConfig(theta=theta)


def arch_config_from_hf(raw: dict[str, Any]) -> ArchConfig:
    """Builds an ArchConfig from a parsed config.json; raises ValueError for an unsupported architecture."""
    archs = raw.get("architectures") or []
    name = archs[0] if archs else _guess_architecture(raw.get("model_type", ""))
    if name not in HF_ARCHITECTURES:
        supported = ", ".join(sorted(HF_ARCHITECTURES))
        raise ValueError(
            f"unsupported architecture {name or raw.get('model_type')!r}; ladle supports: {supported}"
        )
    family = HF_ARCHITECTURES[name]
    if "text_config" in raw:  # multimodal Gemma 3 checkpoints: ladle runs the text part
        text = dict(raw["text_config"])
        text.setdefault("architectures", ["Gemma3ForCausalLM"])
        cfg = arch_config_from_hf(text)
        cfg.architecture = name
        cfg.eos_token_ids = cfg.eos_token_ids or _as_list(raw.get("eos_token_id"))
        return cfg

    hidden = int(raw["hidden_size"])
    heads = int(raw["num_attention_heads"])
    head_dim = int(raw.get("head_dim") or hidden // heads)
    layers = int(raw["num_hidden_layers"])
    theta = float(raw.get("rope_theta", 10000.0))
    rope_params = raw.get("rope_parameters")
    common: dict[str, Any] = dict(
        family=family,
        architecture=name,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", family == "gemma3")),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_as_list(raw.get("eos_token_id")),
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
    )
    if family == "gemma3":
        layer_types = raw.get("layer_types") or [
            SLIDING_ATTENTION if (i + 1) % int(raw.get("sliding_window_pattern", 6)) else FULL_ATTENTION
            for i in range(layers)
        ]
        if rope_params and FULL_ATTENTION in rope_params:
            rope = _rope_from_hf(rope_params.get(FULL_ATTENTION), theta, None)
            local = _rope_from_hf(rope_params.get(SLIDING_ATTENTION), 10000.0, None)
        else:
            rope = _rope_from_hf(None, float(raw.get("rope_theta", 1_000_000.0)), raw.get("rope_scaling"))
            local = RopeConfig(theta=float(raw.get("rope_local_base_freq", 10000.0)))
        return ArchConfig(
            **common,
            hidden_act=raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh",
            attention_bias=bool(raw.get("attention_bias", False)),
            qk_norm=True,
            rope=rope,
            local_rope=local,
            sliding_window=raw.get("sliding_window"),
            layer_types=list(layer_types),
            attention_scale=float(raw.get("query_pre_attn_scalar", head_dim)) ** -0.5,
            final_logit_softcapping=raw.get("final_logit_softcapping"),
            embedding_scale=hidden**0.5,
        )

    sliding = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
    layer_types = raw.get("layer_types")
    if name.startswith("Qwen") and not raw.get("use_sliding_window", False):
        sliding, layer_types = None, None  # Qwen configs carry a window they do not use
    return ArchConfig(
        **common,
        hidden_act=raw.get("hidden_act", "silu"),
        attention_bias=bool(raw.get("attention_bias", name == "Qwen2ForCausalLM")),
        qk_norm=name == "Qwen3ForCausalLM",
        rope=_rope_from_hf(rope_params, theta, raw.get("rope_scaling")),
        sliding_window=sliding,
        layer_types=list(layer_types) if layer_types else [],
    )


def _guess_architecture(model_type: str) -> str:
    return {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "gemma3_text": "Gemma3ForCausalLM",
        "gemma3": "Gemma3ForConditionalGeneration",
    }.get(model_type, model_type)
