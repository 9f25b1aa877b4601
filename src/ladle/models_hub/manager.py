"""ModelManager: which models are loaded, and loading one when a request first names it.

Each loaded model is one AsyncEngine (its own loop thread and KV pool). The served model id is the name as
the user gave it (a path today; `name:tag` once the store resolves names through resolve_model_path).
keep_alive, unloading and a cap on loaded models come later; the hooks for them are `LoadedModel.last_used`,
`LoadedModel.expires_at` and `unload()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladle.engine.async_engine import AsyncEngine
from ladle.outputs import RequestOutput
from ladle.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# generation_config.json fields that become default sampling values, as vLLM's server reads them.
_GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class ModelNotFoundError(LookupError):
    def __init__(self, name: str, why: str = "") -> None:
        super().__init__(f"model {name!r} not found" + (f": {why}" if why else ""))
        self.name = name


@dataclass
class EngineOptions:
    """Engine settings every model loaded by this server gets (from `ladle serve` flags)."""

    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    load_format: str = "auto"
    seed: int = 0
    # LADLE_MAX_QUEUE: requests allowed to wait beyond the running slots before answering 503.
    max_queue: int = field(default_factory=lambda: int(os.environ.get("LADLE_MAX_QUEUE", "512")))


@dataclass
class LoadedModel:
    name: str  # the id clients use
    path: str  # what resolve_model_path gave
    engine: AsyncEngine
    loaded_at: float  # time.time()
    load_seconds: float
    size_bytes: int
    generation_config: dict[str, Any]
    last_used: float = field(default_factory=time.time)
    expires_at: float | None = None  # keep_alive (issue 5); None: stays loaded

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def chat_template(self) -> str | None:
        return self.engine.engine.checkpoint.chat_template

    def default_sampling_values(self) -> dict[str, Any]:
        """The model's generation_config.json values for the fields a request left out (like vLLM)."""
        gen = self.generation_config
        values = {k: gen[k] for k in _GENERATION_DEFAULTS if gen.get(k) is not None}
        if isinstance(gen.get("max_new_tokens"), int):
            values["max_tokens"] = gen["max_new_tokens"]
        return values

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.default_sampling_values())


def _size_on_disk(path: str) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.glob("*.safetensors")) + sum(
        f.stat().st_size for f in p.glob("*.gguf")
    )


class ModelManager:
    def __init__(
        self,
        options: EngineOptions | None = None,
        on_finished: Callable[[str, RequestOutput], None] | None = None,
    ) -> None:
        self.options = options or EngineOptions()
        self.on_finished = on_finished  # (model name, final output): the server's metrics hook
        self.models: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}

    @property
    def is_loading(self) -> bool:
        return bool(self._loading)

    @property
    def any_dead(self) -> bool:
        return any(m.engine.is_dead for m in self.models.values())

    def loaded(self) -> list[LoadedModel]:
        return list(self.models.values())

    def default_model(self) -> str | None:
        """The model a request without a `model` field gets: the only one served, else none."""
        return next(iter(self.models)) if len(self.models) == 1 else None

    async def get(self, name: str | None) -> LoadedModel:
        """The loaded model called `name`, loading it first if the name resolves. ModelNotFoundError else."""
        if not name:
            default = self.default_model()
            if default is None:
                raise ModelNotFoundError("", "the request names no model")
            name = default
        model = self.models.get(name)
        if model is None:
            model = await self.load(name)
        model.last_used = time.time()
        return model

    async def load(self, name: str) -> LoadedModel:
        if name in self.models:
            return self.models[name]
        return await asyncio.shield(self.start_load(name))

    def start_load(self, name: str) -> asyncio.Future[LoadedModel]:
        """Starts loading `name` (at once visible to is_loading) and returns the shared load task: one load
        per name, whoever else asks while it runs."""
        task = self._loading.get(name)
        if task is None:
            task = asyncio.ensure_future(self._load(name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        return task

    async def _load(self, name: str) -> LoadedModel:
        from ladle.models_hub.resolve import resolve_model_path

        try:
            path = await asyncio.to_thread(resolve_model_path, name)
        except (FileNotFoundError, LookupError) as exc:
            raise ModelNotFoundError(name, str(exc)) from None
        except ValueError as exc:
            raise ModelNotFoundError(name, str(exc)) from None
        start = time.perf_counter()
        try:
            engine = await asyncio.to_thread(self._build_engine, name, path)
        except FileNotFoundError as exc:
            raise ModelNotFoundError(name, str(exc)) from None
        except ValueError as exc:
            # A path that exists but is not a model we can open: still "not found" as a model.
            raise ModelNotFoundError(name, str(exc)) from None
        model = LoadedModel(
            name=name,
            path=path,
            engine=engine,
            loaded_at=time.time(),
            load_seconds=time.perf_counter() - start,
            size_bytes=_size_on_disk(path),
            generation_config=dict(engine.engine.checkpoint.generation_config),
        )
        self.models[name] = model
        logger.info("loaded model %s from %s in %.1f s", name, path, model.load_seconds)
        return model

    def _build_engine(self, name: str, path: str) -> AsyncEngine:
        from ladle.config import EngineConfig
        from ladle.engine.llm_engine import LLMEngine

        opts = self.options
        config = EngineConfig(
            model=path,
            dtype=opts.dtype,
            device=opts.device,
            max_model_len=opts.max_model_len,
            max_num_seqs=opts.max_num_seqs,
            max_num_batched_tokens=opts.max_num_batched_tokens,
            load_format=opts.load_format,
            seed=opts.seed,
        )
        hook = None
        if self.on_finished is not None:
            on_finished = self.on_finished

            def hook(output: RequestOutput) -> None:
                on_finished(name, output)

        return AsyncEngine(LLMEngine(config), max_queue=opts.max_queue, on_finished=hook)

    def unload(self, name: str) -> bool:
        model = self.models.pop(name, None)
        if model is None:
            return False
        model.engine.shutdown()
        return True

    def shutdown(self) -> None:
        for name in list(self.models):
            self.unload(name)
