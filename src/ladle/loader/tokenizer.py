"""Tokenizer: the `tokenizers` library's fast tokenizer plus what a model folder or GGUF says about
special tokens, BOS/EOS rules and the chat template.

Both loaders produce this one class: Hugging Face folders from tokenizer.json + tokenizer_config.json,
GGUF files by building a `tokenizers.Tokenizer` from the vocabulary in the metadata (loader/gguf_tokenizer.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as FastTokenizer


@dataclass
class Tokenizer:
    backend: FastTokenizer
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # Whether encode() must put BOS in front itself (when the backend's post-processor does not).
    add_bos_token: bool = False
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        self.special_token_ids: set[int] = {
            t.id if hasattr(t, "id") else int(i)
            for i, t in self.backend.get_added_tokens_decoder().items()
            if getattr(t, "special", False)
        }

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.backend.id_to_token(i) or "" for i in ids]

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        continue_final_message: bool = False,
        **kwargs: Any,
    ) -> str:
        from ladle.loader.chat_template import render_chat_template

        template = chat_template or self.chat_template
        if not template:
            raise ValueError("this model has no chat template; send a plain prompt (completions / generate)")
        return render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            continue_final_message=continue_final_message,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def load_hf_tokenizer(folder: str | Path) -> Tokenizer:
    """Reads tokenizer.json and tokenizer_config.json (and chat_template.jinja/json when present)."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json (ladle needs the fast tokenizer file)")
    backend = FastTokenizer.from_file(str(path))
    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    elif (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    if isinstance(template, list):  # a list of named templates: use the default one
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default") or next(iter(named.values()), None)

    bos = _token_text(config.get("bos_token"))
    eos = _token_text(config.get("eos_token"))
    pad = _token_text(config.get("pad_token"))
    bos_id = backend.token_to_id(bos) if bos else None
    eos_id = backend.token_to_id(eos) if eos else None
    return Tokenizer(
        backend=backend,
        bos_token_id=bos_id,
        eos_token_ids=[eos_id] if eos_id is not None else [],
        # The post-processor in tokenizer.json usually adds BOS; add_bos_token covers files where it doesn't.
        add_bos_token=bool(config.get("add_bos_token", False)),
        chat_template=template,
        bos_token=bos,
        eos_token=eos,
        pad_token_id=backend.token_to_id(pad) if pad else None,
    )
