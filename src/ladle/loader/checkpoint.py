"""Opens a model reference (a Hugging Face folder or a .gguf file) into a Checkpoint: its normalized config,
tokenizer, generation defaults and a way to stream its weights. Nothing heavy is read until weights()."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ladle.loader.hf_folder import iter_safetensors, read_config, read_generation_config, safetensors_files
from ladle.loader.tokenizer import Tokenizer, load_hf_tokenizer
from ladle.model.config import ArchConfig, arch_config_from_hf

WeightStream = Iterator[tuple[str, Any]]


@dataclass
class Checkpoint:
    name: str
    path: Path
    arch: ArchConfig
    tokenizer: Tokenizer | None  # None only for dummy-weight benchmarks without tokenizer files
    generation_config: dict[str, Any] = field(default_factory=dict)
    # (device, dtype) -> (Hugging Face name, tensor or quantized weight) pairs; None when only the config
    # is present (load_format="dummy").
    weights: Callable[[torch.device, torch.dtype], WeightStream] | None = None
    format: str = "safetensors"
    chat_template: str | None = None


def open_checkpoint(model: str | Path, load_format: str = "auto", tokenizer: str | None = None) -> Checkpoint:
    path = Path(model).expanduser()
    # Store blobs are named by digest (sha256-...), so a GGUF is known by its magic, not only its suffix.
    if path.is_file() and (path.suffix == ".gguf" or _has_gguf_magic(path)) or load_format == "gguf":
        from ladle.loader.gguf_loader import open_gguf_checkpoint

        return open_gguf_checkpoint(path)
    if path.is_dir():
        return _open_hf_folder(path, load_format, tokenizer)
    if path.exists():
        raise ValueError(f"{path}: not a model (expected a .gguf file or a Hugging Face model folder)")
    raise FileNotFoundError(f"model {str(model)!r} not found: no such file or folder")


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _open_hf_folder(folder: Path, load_format: str, tokenizer: str | None) -> Checkpoint:
    raw = read_config(folder)
    arch = arch_config_from_hf(raw)
    tok_folder = Path(tokenizer) if tokenizer else folder
    # Benchmarks run published configs with dummy weights and no tokenizer: prompts are token ids then.
    skip_tokenizer = load_format == "dummy" and not (tok_folder / "tokenizer.json").is_file()
    tok = None if skip_tokenizer else load_hf_tokenizer(tok_folder)
    gen = read_generation_config(folder)
    weights = None
    if load_format != "dummy":
        files = safetensors_files(folder)  # checked now, so a missing file fails before anything loads

        def weights(device: torch.device, dtype: torch.dtype) -> WeightStream:
            return iter_safetensors(files, device, dtype)

    # generation_config's eos list (e.g. Llama 3's <|eot_id|> too) ends generation, as in transformers.
    eos = _merge_ids(arch.eos_token_ids, gen.get("eos_token_id"), tok.eos_token_ids if tok else None)
    arch.eos_token_ids = eos
    if tok is not None:
        tok.eos_token_ids = eos
        if tok.bos_token_id is None and arch.bos_token_id is not None:
            tok.bos_token_id = arch.bos_token_id
    return Checkpoint(
        name=str(folder),
        path=folder,
        arch=arch,
        tokenizer=tok,
        generation_config=gen,
        weights=weights,
        format="safetensors",
        chat_template=tok.chat_template if tok else None,
    )


def _merge_ids(*sources: Any) -> list[int]:
    merged: list[int] = []
    for source in sources:
        values = source if isinstance(source, (list, tuple)) else [source]
        for v in values:
            if v is not None and int(v) not in merged:
                merged.append(int(v))
    return merged
