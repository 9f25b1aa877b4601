"""ModelManager: which models are loaded, loading one when a request first names it, unloading idle ones.

Each loaded model is one AsyncEngine (its own loop thread and KV pool), keyed by its served name: the
canonical store name (`stories:latest`, so `stories` finds it too) or the path as given.

Like Ollama's scheduler (server/sched.go):
- keep_alive, per request: how long the model stays loaded after its last request ends. A duration string
  ("5m", "1h30m", "300ms") or seconds; 0 unloads it as soon as it is idle; negative keeps it loaded until
  the server stops. Default LADLE_KEEP_ALIVE, else 5m.
- LADLE_MAX_LOADED_MODELS (default 3): before a load that would exceed it, or when free memory looks short
  for the new model, the idle model that expires soonest is unloaded (waiting for one to go idle if all
  are busy). Requests for a model being loaded wait for that one load.
- A model is busy while its engine has requests in flight, and for BUSY_GRACE_SECONDS after a request got
  it (the gap between `get()` and the request reaching the engine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ladle.engine.async_engine import AsyncEngine, EngineDeadError
from ladle.models_hub.keep_alive import DEFAULT_KEEP_ALIVE_SECONDS, parse_keep_alive
from ladle.outputs import RequestOutput
from ladle.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ladle.store import LocalModel, Store

logger = logging.getLogger(__name__)

# Ollama's default cap on loaded models when it can't size by GPU memory (3 per GPU).
DEFAULT_MAX_LOADED_MODELS = 3
# A model handed to a request counts as busy this long, so it isn't unloaded before the request reaches its
# engine (tokenizing and templating happen in between).
BUSY_GRACE_SECONDS = 2.0
# How often the reaper looks for expired models.
REAP_INTERVAL_SECONDS = 0.25

# generation_config.json fields that become default sampling values, as vLLM's server reads them.
_GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class ModelNotFoundError(LookupError):
    def __init__(self, name: str, why: str = "") -> None:
        # The store's messages already say "model 'x' not found, ..."; don't say it twice.
        message = (
            why if why.startswith("model ") else f"model {name!r} not found" + (f": {why}" if why else "")
        )
        super().__init__(message)
        self.name = name


class ModelLoadError(EngineDeadError):
    """A model that resolves but fails to load: the server answers 503 with this one-line message."""


@dataclass
class EngineOptions:
    """Engine settings every model loaded by this server gets (from `ladle serve` flags)."""

    dtype: str = "auto"
    kv_cache_dtype: str = "auto"  # --kv-cache-dtype
    device: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    load_format: str = "auto"
    seed: int = 0
    tensor_parallel_size: int = 1  # GPUs per engine (--tensor-parallel-size)
    distributed_executor_backend: str = "mp"  # mp: processes on this host; ray: a Ray cluster
    data_parallel_size: int = 1  # engine replicas per model behind this server (--data-parallel-size)
    async_scheduling: bool | None = None  # --[no-]async-scheduling; None: on for one CUDA device
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
    expires_at: float | None = None  # time.time() when it unloads if still idle; None: stays loaded
    local: LocalModel | None = (
        None  # the store's model (template, params, system, license), if from the store
    )
    keep_alive: float | None = DEFAULT_KEEP_ALIVE_SECONDS  # seconds after the last request; None: forever
    handed_out_at: float = 0.0  # time.time() of the last get(): busy for BUSY_GRACE_SECONDS after it
    _fallback_template: str | None = field(default=None, repr=False)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def chat_template(self) -> str | None:
        """The weights' own (Jinja) chat template; else the store's Ollama template when it is simple
        enough to translate (see model_options.go_template_to_jinja)."""
        template = self.engine.engine.checkpoint.chat_template
        if template or self.local is None or not self.local.template:
            return template
        if self._fallback_template is None:
            from ladle.models_hub.model_options import template_as_jinja

            self._fallback_template = template_as_jinja(self.local.template) or ""
        return self._fallback_template or None

    @property
    def model_params(self) -> dict[str, Any]:
        """The manifest's PARAMETERs (Ollama option names); empty for a path."""
        return dict(self.local.params) if self.local is not None else {}

    @property
    def default_system(self) -> str | None:
        return self.local.system if self.local is not None else None

    def with_model_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """/api/chat's messages with the model's MESSAGEs and SYSTEM applied (see model_options)."""
        from ladle.models_hub.model_options import with_model_messages

        if self.local is None:
            return messages
        return with_model_messages(messages, self.local.system, self.local.messages)

    def default_sampling_values(self) -> dict[str, Any]:
        """Defaults for the fields a request left out: generation_config.json (like vLLM), overridden by the
        store manifest's PARAMETERs (like Ollama)."""
        from ladle.models_hub.model_options import sampling_defaults

        gen = self.generation_config
        values = {k: gen[k] for k in _GENERATION_DEFAULTS if gen.get(k) is not None}
        if isinstance(gen.get("max_new_tokens"), int):
            values["max_tokens"] = gen["max_new_tokens"]
        values.update(sampling_defaults(self.model_params))
        return values

    @property
    def is_busy(self) -> bool:
        return self.engine.num_in_flight > 0 or time.time() - self.handed_out_at < BUSY_GRACE_SECONDS

    def touch(self) -> None:
        """Mark it used now; its expiry counts from here (and from the end of each request)."""
        self.last_used = time.time()
        self.expires_at = None if self.keep_alive is None else self.last_used + self.keep_alive

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.default_sampling_values())


def _size_on_disk(path: str) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.glob("*.safetensors")) + sum(
        f.stat().st_size for f in p.glob("*.gguf")
    )


def _available_memory(device: str) -> int | None:
    """Bytes free for a new model on `device` ("auto": CUDA when present), or None when unknown."""
    try:
        import torch

        if device in ("auto", "cuda") or device.startswith("cuda:"):
            if torch.cuda.is_available():
                free, _total = torch.cuda.mem_get_info()
                return int(free)
            if device != "auto":
                return None
    except Exception:  # noqa: BLE001 - no torch / no driver: fall back to host memory
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _kv_reserve(device: str) -> int:
    """Memory a new model needs beyond its weights: room for a useful KV pool and activations. On CUDA an
    engine sizes its pool from what is free, so without this a second model could start with a pool of a few
    blocks; a quarter of the card makes the idle model expiring soonest give way instead. On CPU the pool is
    at most LADLE_CPU_KV_CACHE_BYTES (2 GiB by default)."""
    try:
        import torch

        if device in ("auto", "cuda") or device.startswith("cuda:"):
            if torch.cuda.is_available():
                return int(torch.cuda.mem_get_info()[1] * 0.25)
    except Exception:  # noqa: BLE001
        pass
    return int(os.environ.get("LADLE_CPU_KV_CACHE_BYTES", 2 << 30)) + (256 << 20)


def _max_loaded_models() -> int:
    raw = os.environ.get("LADLE_MAX_LOADED_MODELS", "").strip()
    if not raw:
        return DEFAULT_MAX_LOADED_MODELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"LADLE_MAX_LOADED_MODELS: {raw!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"LADLE_MAX_LOADED_MODELS: must be at least 1, got {value}")
    return value


class ModelManager:
    def __init__(
        self,
        options: EngineOptions | None = None,
        on_finished: Callable[[str, RequestOutput], None] | None = None,
        store: Store | None = None,
    ) -> None:
        from ladle.models_hub.keep_alive import default_keep_alive

        self.options = options or EngineOptions()
        self.on_finished = on_finished  # (model name, final output): the server's metrics hook
        self.models: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._store = store
        self.default_keep_alive = default_keep_alive()
        self.max_loaded_models = _max_loaded_models()
        self._load_lock: asyncio.Lock | None = None
        self._reaper: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            from ladle.store import Store

            self._store = Store()
        return self._store

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

    def key(self, name: str) -> str:
        """The served name for a reference (InvalidModelName, a ValueError, for a bad name)."""
        from ladle.models_hub.resolve import model_key

        if name in self.models or name in self._loading:
            return name
        return model_key(name, self.store)

    def find(self, name: str) -> LoadedModel | None:
        """The loaded model a reference names, without loading anything."""
        try:
            return self.models.get(self.key(name))
        except ValueError:
            return None

    async def get(self, name: str | None, keep_alive: str | int | float | None = None) -> LoadedModel:
        """The loaded model called `name`, loading it first if the name resolves. ModelNotFoundError else.
        `keep_alive` (the request's; None: the default) sets how long it stays loaded after this request."""
        seconds = parse_keep_alive(keep_alive, self.default_keep_alive)
        if not name:
            default = self.default_model()
            if default is None:  # a bad request (400 naming `model`), not a missing model
                served = sorted(self.models)
                raise ValueError(
                    f"model: the request names no model, and the server has {len(served)} loaded"
                    + (f" ({', '.join(served)}): name one" if served else ": name the model to load")
                )
            name = default
        key = self.key(name)
        self._ensure_reaper()
        model = self.models.get(key)
        if model is None:
            model = await self.load(key)
        model.keep_alive = seconds
        model.handed_out_at = time.time()
        model.touch()
        return model

    async def load(self, name: str) -> LoadedModel:
        if name in self.models:
            return self.models[name]
        return await asyncio.shield(self.start_load(name))

    def start_load(self, name: str) -> asyncio.Future[LoadedModel]:
        """Starts loading `name` (at once visible to is_loading) and returns the shared load task: one load
        per name, whoever else asks while it runs."""
        try:
            name = self.key(name)
        except ValueError:
            pass  # _load reports it
        task = self._loading.get(name)
        if task is None:
            task = asyncio.ensure_future(self._load(name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        return task

    async def _load(self, name: str) -> LoadedModel:
        from ladle.models_hub.resolve import resolve_model
        from ladle.store import InvalidModelName, StoreError

        try:
            resolved = await asyncio.to_thread(resolve_model, name, store=self.store, pull_missing=False)
        except InvalidModelName:
            raise
        except (FileNotFoundError, LookupError, ValueError, StoreError) as exc:
            raise ModelNotFoundError(name, str(exc)) from None
        path = resolved.path
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:  # one load at a time, so eviction decisions see every loaded model
            await self._make_room(_size_on_disk(path))
            start = time.perf_counter()
            try:
                engine = await asyncio.to_thread(self._build_engine, name, path)
            except FileNotFoundError as exc:
                raise ModelNotFoundError(name, str(exc)) from None
            except ValueError as exc:
                # A path that exists but is not a model we can open: still "not found" as a model.
                raise ModelNotFoundError(name, str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - out of memory, a missing kernel, a loader bug ...
                logger.exception("loading %s failed", name)
                reason = str(exc).splitlines()[0] if str(exc) else ""
                raise ModelLoadError(
                    f"could not load model '{name}': {type(exc).__name__}: {reason}"
                ) from None
            model = LoadedModel(
                name=name,
                path=path,
                engine=engine,
                loaded_at=time.time(),
                load_seconds=time.perf_counter() - start,
                size_bytes=_size_on_disk(path),
                generation_config=dict(engine.engine.checkpoint.generation_config),
                local=resolved.local,
                keep_alive=self.default_keep_alive,
            )
            model.touch()
            self.models[name] = model
        logger.info("loaded model %s from %s in %.1f s", name, path, model.load_seconds)
        return model

    async def _make_room(self, new_model_bytes: int) -> None:
        """Unload idle models (soonest to expire first) until one more fits under LADLE_MAX_LOADED_MODELS
        and, as far as we can tell, in memory. Waits for a busy model to go idle when the cap requires."""
        while len(self.models) >= self.max_loaded_models:
            victim = self._eviction_candidate()
            if victim is None:
                await asyncio.sleep(REAP_INTERVAL_SECONDS)  # every model is busy: wait, as Ollama does
                continue
            logger.info(
                "unloading %s to make room (LADLE_MAX_LOADED_MODELS=%d)", victim, self.max_loaded_models
            )
            await self.unload_async(victim)
        # Weights plus room for activations and the KV pool (the engine sizes its pool from what is left).
        needed = int(new_model_bytes * 1.2) + await asyncio.to_thread(_kv_reserve, self.options.device)
        while self.models:
            free = await asyncio.to_thread(_available_memory, self.options.device)
            if free is None or free >= needed:
                return
            victim = self._eviction_candidate()
            if victim is None:
                return  # nothing idle to unload: try anyway; the load reports its own error
            logger.info(
                "unloading %s: %d MB free, the new model wants about %d MB", victim, free >> 20, needed >> 20
            )
            await self.unload_async(victim)

    def _eviction_candidate(self) -> str | None:
        idle = [m for m in self.models.values() if not m.is_busy]
        if not idle:
            return None
        return min(idle, key=lambda m: m.expires_at if m.expires_at is not None else float("inf")).name

    def _build_engine(self, name: str, path: str) -> AsyncEngine:
        from ladle.config import EngineConfig
        from ladle.engine.llm_engine import LLMEngine

        opts = self.options
        config = EngineConfig(
            model=path,
            dtype=opts.dtype,
            kv_cache_dtype=opts.kv_cache_dtype,
            device=opts.device,
            max_model_len=opts.max_model_len,
            max_num_seqs=opts.max_num_seqs,
            max_num_batched_tokens=opts.max_num_batched_tokens,
            load_format=opts.load_format,
            seed=opts.seed,
            tensor_parallel_size=opts.tensor_parallel_size,
            distributed_executor_backend=opts.distributed_executor_backend,
            async_scheduling=opts.async_scheduling,
        )
        on_finished = self.on_finished

        def hook(output: RequestOutput) -> None:
            model = self.models.get(name)
            if model is not None:
                model.touch()  # keep_alive counts from the end of the last request
            if on_finished is not None:
                on_finished(name, output)

        if opts.data_parallel_size > 1:
            from ladle.engine.replicas import ReplicaPool, replica_configs

            # One AsyncEngine face over K replicas (least-loaded routing), each on its own devices.
            return ReplicaPool(  # type: ignore[return-value]
                [
                    AsyncEngine(LLMEngine(c), max_queue=opts.max_queue, on_finished=hook)
                    for c in replica_configs(config, opts.data_parallel_size)
                ]
            )
        return AsyncEngine(LLMEngine(config), max_queue=opts.max_queue, on_finished=hook)

    # ---- unloading -----------------------------------------------------------------------------------

    def expire(self, name: str) -> bool:
        """keep_alive 0 without a prompt (`ladle stop`): unload as soon as no request is running. False when
        the model is not loaded."""
        model = self.find(name)
        if model is None:
            return False
        model.keep_alive = 0.0
        model.handed_out_at = 0.0  # no grace period: nothing is on its way to this engine
        model.expires_at = time.time()
        self._ensure_reaper()
        if model.engine.num_in_flight == 0:
            self.unload(model.name)
        return True

    def unload(self, name: str) -> bool:
        model = self.models.pop(name, None)
        if model is None:
            return False
        model.engine.shutdown()
        _release_memory()
        logger.info("unloaded model %s", name)
        return True

    async def unload_async(self, name: str) -> bool:
        """unload() without blocking the event loop while the engine thread stops."""
        model = self.models.pop(name, None)
        if model is None:
            return False
        await asyncio.to_thread(model.engine.shutdown)
        await asyncio.to_thread(_release_memory)
        logger.info("unloaded model %s", name)
        return True

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            try:
                self._reaper = asyncio.get_running_loop().create_task(self._reap())
            except RuntimeError:
                self._reaper = None  # no event loop (offline use): nothing expires

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_SECONDS)
            now = time.time()
            for model in list(self.models.values()):
                if model.engine.num_in_flight > 0:
                    model.touch()  # still answering: its keep_alive starts when it is done
                    continue
                if model.expires_at is not None and now >= model.expires_at and not model.is_busy:
                    try:
                        await self.unload_async(model.name)
                    except Exception:  # noqa: BLE001 - one bad unload must not stop expiry for the rest
                        logger.exception("unloading %s failed", model.name)

    def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for name in list(self.models):
            self.unload(name)


def _release_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
