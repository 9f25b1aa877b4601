"""Request bodies of Ollama's /api routes (Ollama's field names and option names), and their translation to
SamplingParams with Ollama's defaults under the model's own generation_config values."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ladle.sampling_params import SamplingParams
from ladle.server.errors import bad_request
from ladle.server.thinking import template_thinks

# Ollama's DefaultOptions (api/types.go) for what the model's generation_config leaves out. No default
# repeat_penalty: Ollama's own engine doesn't apply one, and temperature 0 should mean plain greedy.
OLLAMA_DEFAULTS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Options(_Body):
    """The `options` object. Unknown options are ignored, as Ollama does (it only logs them)."""

    num_predict: int | None = None  # -1: until the context is full (also -2 and 0, as "no limit")
    temperature: float | None = Field(None, ge=0.0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1024)
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(None, gt=0.0)
    repeat_last_n: int | None = Field(None, ge=-1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_ctx: int | None = Field(None, ge=1)


class _Common(_Body):
    model: str = Field(min_length=1)
    stream: bool | None = True
    format: str | dict[str, Any] | None = None
    keep_alive: str | int | float | None = None  # accepted; unloading comes with the model scheduler
    options: Options | None = None
    think: bool | str | None = None

    def check_unsupported(self) -> None:
        """What is refused before the model is known (subclasses add theirs)."""

    def thinking_kwargs(self, template: str | None) -> dict[str, Any]:
        """The chat-template variables `think` sets, as Ollama does: true / false turn a thinking model's
        thinking on / off through its template's enable_thinking switch (Qwen3's); a model that cannot
        think, or a level for one that is only on or off, is a 400 naming `think`."""
        if self.think is None:
            return {}
        switch = "enable_thinking" in (template or "")
        if self.think is False:
            return {"enable_thinking": False} if switch else {}
        if not template_thinks(template):
            raise bad_request(f'"{self.model}" does not support thinking', "think")
        if self.think is not True:
            raise bad_request(
                f"think: {self.think!r}: this model's thinking is on or off (true or false)", "think"
            )
        return {"enable_thinking": True} if switch else {}

    def wants_thinking(self, template: str | None) -> bool:
        """think: true on a thinking model: its reply comes back as thinking and answer apart."""
        return self.think is True and template_thinks(template)

    def sampling_params(self, defaults: dict[str, Any], prompt_len: int, room: int) -> SamplingParams:
        """`room` is what's left of the context after the prompt; num_predict and num_ctx only cut it
        (Ollama stops at the context's end rather than refusing the request)."""
        o = self.options or Options()
        values: dict[str, Any] = {
            **OLLAMA_DEFAULTS,
            **{k: v for k, v in defaults.items() if k != "max_tokens"},
        }
        chosen = {
            "temperature": o.temperature,
            "top_k": o.top_k,
            "top_p": o.top_p if o.top_p is None or o.top_p > 0 else 1.0,
            "min_p": o.min_p,
            "repetition_penalty": o.repeat_penalty,
            "presence_penalty": o.presence_penalty,
            "frequency_penalty": o.frequency_penalty,
            "penalty_window": o.repeat_last_n,
            "stop": o.stop,
        }
        values.update({k: v for k, v in chosen.items() if v is not None})
        if o.seed is not None and o.seed >= 0:  # Ollama's -1: a random seed
            values["seed"] = o.seed
        max_tokens = room
        if o.num_ctx is not None:
            max_tokens = min(max_tokens, max(1, o.num_ctx - prompt_len))
        if o.num_predict is not None and o.num_predict > 0:
            max_tokens = min(max_tokens, o.num_predict)
        values["max_tokens"] = max_tokens
        return SamplingParams(**values)


class GenerateRequest(_Common):
    prompt: str | None = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.images:
            raise bad_request("images: this model is text-only; it cannot take image input", "images")
        if self.suffix:
            raise bad_request("suffix: fill-in-the-middle is not supported", "suffix")


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None  # on a tool result: which tool produced it


class ChatRequest(_Common):
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        for i, m in enumerate(self.messages or []):
            if m.images:
                raise bad_request(
                    f"messages.{i}.images: this model is text-only; it cannot take image input",
                    f"messages.{i}.images",
                )

    def template_messages(self) -> list[dict[str, Any]]:
        messages = []
        for m in self.messages or []:
            message: dict[str, Any] = {"role": m.role, "content": m.content or ""}
            if m.tool_calls:
                message["tool_calls"] = m.tool_calls
            if m.tool_name:
                message["name"] = m.tool_name
            messages.append(message)
        return messages


class EmbedRequest(_Body):
    """/api/embed (input) and the older /api/embeddings (prompt)."""

    model: str = Field(min_length=1)
    input: str | list[str] | None = None
    prompt: str | None = None
    keep_alive: str | int | float | None = None


class ShowRequest(_Body):
    model: str | None = None
    name: str | None = None  # the older field name, still sent by some clients
    verbose: bool = False

    def model_name(self) -> str:
        name = self.model or self.name
        if not name:
            raise bad_request("model: is required", "model")
        return name
