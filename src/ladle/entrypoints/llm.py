"""LLM: the offline API, a drop-in for vLLM's `LLM` (generate, chat)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

from ladle.chat_content import join_text_parts
from ladle.config import EngineConfig
from ladle.engine.llm_engine import LLMEngine
from ladle.outputs import RequestOutput
from ladle.sampling_params import SamplingParams

PromptType = str | list[int] | dict[str, Any]

# generation_config.json fields that become default sampling values, as vLLM reads them.
_GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class LLM:
    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        device: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        load_format: str = "auto",
        tensor_parallel_size: int = 1,
        seed: int = 0,
        tokenizer: str | None = None,
        kv_cache_dtype: str = "auto",
        trust_remote_code: bool = False,
        **engine_options: Any,
    ) -> None:
        """trust_remote_code is accepted for vLLM scripts that pass it and changes nothing: ladle runs its
        own implementation of each architecture and never a repository's Python code."""
        from ladle.models_hub.resolve import resolve_model_path

        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model: must be a path or a model name (a string), got {type(model).__name__}")
        config = EngineConfig(
            model=resolve_model_path(os.fspath(model)),
            dtype=dtype,
            device=device,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            load_format=load_format,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            tokenizer=tokenizer,
            kv_cache_dtype=kv_cache_dtype,
            **engine_options,
        )
        self.llm_engine = LLMEngine(config)
        self._counter = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        gen = self.llm_engine.checkpoint.generation_config
        values = {k: gen[k] for k in _GENERATION_DEFAULTS if gen.get(k) is not None}
        return SamplingParams(**values)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        prompt_list = _as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompt_list)
        else:
            if isinstance(sampling_params, (str, bytes, dict)) or not hasattr(sampling_params, "__iter__"):
                raise TypeError(
                    "sampling_params: must be a SamplingParams or a list of them, "
                    f"got {type(sampling_params).__name__}"
                )
            params_list = list(sampling_params)
            bad = [p for p in params_list if not isinstance(p, SamplingParams)]
            if bad:
                raise TypeError(f"sampling_params: each entry must be a SamplingParams, got {bad[0]!r}")
            if len(params_list) != len(prompt_list):
                raise ValueError(
                    f"sampling_params: got {len(params_list)} for {len(prompt_list)} prompts (give one, or one per prompt)"
                )
        engine = self.llm_engine
        ids = []
        try:
            for prompt, params in zip(prompt_list, params_list):
                request_id = str(next(self._counter))
                engine.add_request(request_id, prompt, params)
                ids.append(request_id)
            return self._run(ids)
        except BaseException:
            engine.abort_request(ids)  # leave no half-finished work behind (e.g. a ValueError on prompt 3)
            raise

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        continue_final_message: bool = False,
    ) -> list[RequestOutput]:
        """vLLM's LLM.chat: each conversation through the model's chat template, then generate.
        continue_final_message=True writes on in the last message (e.g. an assistant reply begun for the
        model) instead of starting a new turn; it implies no generation prompt."""
        if not isinstance(messages, (list, tuple)):
            raise TypeError(f"messages: must be a list of message dicts, got {type(messages).__name__}")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.llm_engine.tokenizer
        prompts: list[PromptType] = []
        for conversation in conversations:
            if not isinstance(conversation, (list, tuple)):
                raise TypeError(
                    "messages: must be a list of message dicts, or a list of such lists; "
                    f"got an entry of type {type(conversation).__name__}"
                )
            text = tokenizer.apply_chat_template(
                [_template_message(m, i) for i, m in enumerate(conversation)],
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                chat_template=chat_template,
                continue_final_message=continue_final_message,
                **(chat_template_kwargs or {}),
            )
            # The template already wrote BOS where the model wants it.
            prompts.append(
                {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}
            )
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, request_ids: list[str]) -> list[RequestOutput]:
        engine = self.llm_engine
        pending = set(request_ids)
        finished: dict[str, RequestOutput] = {}
        while pending:
            for out in engine.step(finished_only=True):
                if out.finished and out.request_id in pending:
                    finished[out.request_id] = out
                    pending.discard(out.request_id)
        return [finished[i] for i in request_ids]


def _template_message(message: Any, index: int) -> dict[str, Any]:
    """A chat message as templates read it: OpenAI-style text parts joined into one string (by the function
    the server's chat routes use too), no content as ""."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ValueError(f"messages[{index}]: must be a dict with a 'role' and a 'content', got {message!r}")
    content = message.get("content")
    if isinstance(content, list):
        content = join_text_parts(content, f"messages[{index}].content")
    return {**message, "content": content if content is not None else ""}


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if not hasattr(prompts, "__iter__"):
        raise TypeError(
            "prompts: must be a string, a dict, a list of token ids, or a list of those; "
            f"got {type(prompts).__name__}"
        )
    prompts = list(prompts)
    if prompts and isinstance(prompts[0], int):
        return [prompts]  # a single list of token ids
    return prompts
