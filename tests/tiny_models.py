"""Tiny random transformers models for tests: built from a config (no download), saved with a real
tokenizer trained by the `tokenizers` library, so ladle loads them exactly as it loads published models."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A little text to train the test tokenizer on: enough for a few hundred merges, with multi-byte UTF-8.
CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }",
    "Größe, café, naïve, 東京, 日本語のテキスト, emoji 🙂🚀, Привет мир, مرحبا",
    "def main():\n    print('hello world')\n    return 42\n",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.save(str(folder / "tokenizer.json"))
    template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": template})
    )


COMMON = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)


def _configs():
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    return {
        "llama": lambda: LlamaConfig(**COMMON, tie_word_embeddings=False),
        "llama3_rope": lambda: LlamaConfig(
            **COMMON,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            rope_theta=500000.0,
            tie_word_embeddings=True,
        ),
        "mistral": lambda: MistralConfig(**COMMON, sliding_window=12),
        "qwen2": lambda: Qwen2Config(**COMMON, tie_word_embeddings=True),
        "qwen3": lambda: Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=False),
        "gemma3": lambda: Gemma3TextConfig(
            **{**COMMON, "num_hidden_layers": 4, "num_key_value_heads": 1},
            head_dim=32,
            sliding_window=12,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            query_pre_attn_scalar=24,
        ),
    }


ARCHITECTURES = ["llama", "llama3_rope", "mistral", "qwen2", "qwen3", "gemma3"]


def build_tiny_model(kind: str, folder: Path, seed: int = 0):
    """Saves a random model of the given kind to `folder`; returns the transformers model (float32, eval)."""
    from transformers import AutoModelForCausalLM

    config = _configs()[kind]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # Random init leaves norms at 1 (or 0 for Gemma); perturb them so a wrong norm formula is caught.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(2.0)  # sharper distributions: fewer near-ties between the top two tokens
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    build_tokenizer(folder, COMMON["vocab_size"])
    return model
