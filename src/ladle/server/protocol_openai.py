"""Request bodies of the OpenAI routes (OpenAI's field names, plus vLLM's extra sampling fields), and their
translation to SamplingParams. Responses are plain dicts built in openai_routes.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ladle.chat_content import join_text_parts
from ladle.sampling_params import SamplingParams
from ladle.server.errors import bad_request

# torch.Generator seeds are 64-bit; a choice's seed is seed + index, so stay clear of the top.
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1024)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# More choices than this is almost certainly a mistake and would only exhaust memory.
MAX_N = 128


class _Body(BaseModel):
    # Unknown fields are ignored (as vLLM does) so newer clients keep working; NaN/inf are rejected.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _SamplingFields(_Body):
    """Fields both routes share."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM's extra field: per prompt token its logprob and the top ones (per choice in completions, once in
    # a chat completion).
    prompt_logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = 0.0
    frequency_penalty: Penalty | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    # vLLM's structured-output fields (read by ladle.structured.requests; errors name them).
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict[str, Any] | None = None
    # vLLM's extra sampling fields.
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True  # accepted; the tokenizers library decides spacing

    def check_unsupported(self) -> None:
        if self.stream and self.prompt_logprobs is not None:
            raise bad_request(
                "prompt_logprobs: not available with stream=true (as in vLLM)", "prompt_logprobs"
            )

    _CONSTRAINT_FIELDS = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")

    def constraint_fields(self) -> dict[str, Any]:
        """The structured-output fields that were given, by name (see ladle.structured.requests)."""
        names = (*self._CONSTRAINT_FIELDS, "structured_outputs")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def constraint_source(self) -> str:
        return next(iter(self.constraint_fields()), "structured_outputs")

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(
        self, defaults: dict[str, Any], max_tokens: int | None, logprobs: int | None
    ) -> SamplingParams:
        """Request values, else the model's generation_config defaults, else SamplingParams' own."""
        bias = None
        if self.logit_bias:
            try:
                bias = {int(k): v for k, v in self.logit_bias.items()}
            except ValueError:
                raise bad_request("logit_bias: keys must be token ids (integers)", "logit_bias") from None
        values: dict[str, Any] = {
            "n": self.n,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "seed": self.seed,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "include_stop_str_in_output": self.include_stop_str_in_output,
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
            "skip_special_tokens": self.skip_special_tokens,
            "logit_bias": bias,
            "logprobs": logprobs,
            "max_tokens": max_tokens,
        }
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                values[name] = value
            elif name in defaults:
                values[name] = defaults[name]
        return SamplingParams(**values)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    suffix: str | None = None
    add_special_tokens: bool = True

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.suffix:
            raise bad_request("suffix: is not supported", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise bad_request("best_of: only best_of == n is supported", "best_of")

    def engine_prompt_logprobs(self) -> int | None:
        """SamplingParams.prompt_logprobs: what prompt_logprobs asks for, and what echo with logprobs needs
        (the echoed prompt's tokens get logprobs too, as in OpenAI's legacy completions)."""
        wanted = [n for n in (self.prompt_logprobs, self.logprobs if self.echo else None) if n is not None]
        return max(wanted) if wanted else None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise bad_request("prompt: must not be empty", "prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def as_template_message(self, index: int) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            field = f"messages.{index}.content"
            try:
                content = join_text_parts([part.model_dump() for part in content], field)
            except ValueError as exc:  # an image or audio part: the client's mistake, a 400 naming the field
                raise bad_request(str(exc), field) from None
        message: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name:
            message["name"] = self.name
        extra = self.model_extra or {}
        for key in ("tool_calls", "tool_call_id"):  # assistant calls and tool results, for the template
            if extra.get(key) is not None:
                message[key] = extra[key]
        return message


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's chat extras.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.top_logprobs and not self.logprobs:
            raise bad_request("top_logprobs: needs logprobs set to true", "top_logprobs")

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens is OpenAI's newer name; it wins when both are given.
        return self.max_completion_tokens or self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.as_template_message(i) for i, m in enumerate(self.messages)]


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]
