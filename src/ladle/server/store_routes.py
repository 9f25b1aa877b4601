"""Ollama's store routes, backed by ladle's model store: /api/pull, /api/create, /api/copy, DELETE /api/delete,
and the store-aware /api/tags, /api/show, /api/ps (which take precedence over the loaded-model-only versions in
ollama_models_routes, still used for models loaded by path).

Shapes are Ollama's, so the official `ollama` client parses them. Errors are {"error": "..."}: 400 for a bad
name or Modelfile, 404 for a missing model, also when a pull fails (not in the registry, registry
unreachable, a broken download).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ladle.models_hub.resolve import looks_like_path, path_exists
from ladle.server.errors import ApiError, bad_request
from ladle.server.served_models import served_models
from ladle.server.state import server_state
from ladle.server.streams import ndjson
from ladle.server.thinking import template_thinks
from ladle.store import (
    InvalidModelName,
    LocalModel,
    ModelfileError,
    ModelNotFound,
    PullError,
    ReadOnlyModel,
    StoreError,
    format_modelfile,
    parse_model_name,
    pull,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ollama-store"])

# Go's zero time, which Ollama sends as expires_at for a model that never expires... we send a far date that
# every client's parser reads (the official client parses it with datetime.fromisoformat).
_FOREVER = "2318-01-01T00:00:00Z"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NameRequest(_Body):
    model: str | None = None
    name: str | None = None  # the older field name, still sent by some clients

    def model_name(self) -> str:
        name = self.model if self.model is not None else self.name
        if name is None or not name.strip():
            raise bad_request("model: is required", "model")
        return name


class PullRequest(NameRequest):
    insecure: bool = False
    stream: bool | None = True


class ShowRequest(NameRequest):
    verbose: bool = False


class CopyRequest(_Body):
    source: str
    destination: str


class CreateRequest(NameRequest):
    stream: bool | None = True
    from_: str | None = Field(None, alias="from")
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    license: str | list[str] | None = None
    messages: list[dict[str, Any]] | None = None
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    quantize: str | None = None
    modelfile: str | None = None  # the older form: Modelfile text
    path: str | None = None  # the older form: where the Modelfile was (relative FROM paths)

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ---- helpers ---------------------------------------------------------------------------------------------


def _iso(value: dt.datetime | float | None) -> str:
    if value is None:
        return _FOREVER
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _store_error(exc: Exception) -> ApiError:
    """The HTTP answer for a store exception."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, (InvalidModelName, ModelfileError)):
        return ApiError(400, message)
    if isinstance(exc, ModelNotFound):
        return ApiError(404, message)
    if isinstance(exc, ReadOnlyModel):
        return ApiError(400, message)
    if isinstance(exc, PullError):
        # Not found there, or no registry to ask: either way this server has no such model to give. (Not
        # a 5xx: the server itself is fine, and clients treat 5xx as "retry".)
        return ApiError(404, message)
    return ApiError(400, message)


def _details(details: Any) -> dict[str, Any]:
    return {
        "parent_model": details.parent_model or "",
        "format": details.format or "",
        "family": details.family or "",
        "families": details.families,
        "parameter_size": details.parameter_size or "",
        "quantization_level": details.quantization_level or "",
    }


def parameters_text(params: dict[str, Any]) -> str:
    """PARAMETERs as Ollama's /api/show lists them: `name<padding> value`, strings quoted, lists one a line."""
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                text = json.dumps(item, ensure_ascii=False)
            elif isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, float) and item.is_integer():
                text = str(int(item))  # Go prints float64 0 as 0
            else:
                text = str(item)
            lines.append(f"{key:<30} {text}")
    return "\n".join(lines)


@lru_cache(maxsize=64)
def _gguf_model_info(path: str, mtime: float, verbose: bool) -> dict[str, Any]:
    """Ollama's model_info: the GGUF metadata (arrays left out unless verbose) plus the parameter count."""
    from ladle.loader.gguf_file import read_gguf

    gguf_file = read_gguf(path)  # ladle's reader: ~15x faster than gguf.GGUFReader on large vocabularies
    try:
        info: dict[str, Any] = {}
        # Most GGUF files leave <arch>.vocab_size out (the token list is the vocabulary); clients such as
        # `ladle bench serve` read it from here, so give it as the loader counts it.
        tokens = gguf_file.metadata.get("tokenizer.ggml.tokens")
        arch = gguf_file.metadata.get("general.architecture")
        if isinstance(tokens, list) and isinstance(arch, str):
            info[f"{arch}.vocab_size"] = len(tokens)
        for key, value in gguf_file.metadata.items():
            if key.startswith("GGUF."):
                continue
            if isinstance(value, list) and not verbose:
                info[key] = None
                continue
            if isinstance(value, float) and value != value:
                value = None
            info[key] = value
        info.setdefault(
            "general.parameter_count", sum(math.prod(t.shape) for t in gguf_file.tensors.values())
        )
    finally:
        gguf_file.close()
    return dict(sorted(info.items()))


def _folder_model_info(path: Path) -> dict[str, Any]:
    """model_info for a safetensors model, from config.json in Ollama's GGUF-style key names."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    arch = str(config.get("model_type") or "")
    info: dict[str, Any] = {"general.architecture": arch}
    for key, name in (
        ("max_position_embeddings", "context_length"),
        ("hidden_size", "embedding_length"),
        ("num_hidden_layers", "block_count"),
        ("intermediate_size", "feed_forward_length"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
        ("vocab_size", "vocab_size"),
    ):
        if isinstance(text.get(key), int):
            info[f"{arch}.{name}"] = text[key]
    from ladle.store.details import _safetensors_parameter_count

    info["general.parameter_count"] = sum(_safetensors_parameter_count(p) for p in path.glob("*.safetensors"))
    return info


def model_info(local: LocalModel, verbose: bool = False) -> dict[str, Any]:
    path = Path(local.model_path)
    try:
        if local.format == "gguf":
            return _gguf_model_info(str(path), path.stat().st_mtime, verbose)
        return _folder_model_info(path)
    except Exception as exc:  # noqa: BLE001 - details are a courtesy; the rest of /api/show still answers
        logger.warning("could not read model_info of %s: %s", local.name, exc)
        return {}


def _memory_bytes(model_path: str | Path, fmt: str, name: str) -> int | None:
    from ladle.loader.memory import weights_memory_bytes

    try:
        return weights_memory_bytes(model_path, fmt)
    except Exception as exc:  # noqa: BLE001 - a courtesy figure; the rest of /api/show still answers
        logger.warning("could not size the weights of %s: %s", name, exc)
        return None


def _stored_chat_template(local: LocalModel, info: dict[str, Any]) -> str | None:
    """The chat template a loaded model would use, read without loading it: the weights' own (GGUF
    metadata, or the folder's tokenizer files), else the store's TEMPLATE (LoadedModel.chat_template)."""
    template = info.get("tokenizer.chat_template") if local.format == "gguf" else None
    if local.format != "gguf":
        folder = Path(local.model_path)
        try:
            if (folder / "chat_template.jinja").is_file():
                template = (folder / "chat_template.jinja").read_text()
            elif (folder / "tokenizer_config.json").is_file():
                template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
        except (OSError, ValueError):
            template = None
    return template if isinstance(template, str) and template else local.template


def show_response(local: LocalModel, verbose: bool = False) -> dict[str, Any]:
    info = model_info(local, verbose)  # a GGUF's holds its tokenizer.chat_template (a string, kept)
    thinks = template_thinks(_stored_chat_template(local, info))
    response: dict[str, Any] = {
        "license": local.license or "",
        "modelfile": local.to_modelfile(),
        "parameters": parameters_text(local.params),
        "template": local.template or "",
        "details": _details(local.details),
        "model_info": info,
        "capabilities": ["completion", *(["thinking"] if thinks else [])],
        "modified_at": _iso(local.modified_at),
    }
    memory = _memory_bytes(local.model_path, local.format, local.name)
    if memory is not None:
        response["memory_bytes"] = memory  # ladle's own field: the weights' size once loaded on the CPU
    if local.system:
        response["system"] = local.system
    if local.messages:
        response["messages"] = local.messages
    return response


async def _in_thread_with_events(
    work: Callable[[Callable[[dict[str, Any]], None]], Any],
) -> tuple[asyncio.Queue, asyncio.Future]:
    """Run `work(progress)` on a thread; its progress events arrive on the returned queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def progress(event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, dict(event))

    future = asyncio.ensure_future(asyncio.to_thread(work, progress))
    return queue, future


async def _events(queue: asyncio.Queue, future: asyncio.Future) -> AsyncIterator[dict[str, Any]]:
    """Progress events until the work ends; its exception, if any, is raised after the events before it."""
    while True:
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
            continue
        getter.cancel()
        while not queue.empty():
            yield queue.get_nowait()
        future.result()  # raises the work's error
        return


async def _progress_response(
    work: Callable[[Callable[[dict[str, Any]], None]], Any],
    stream: bool | None,
    ready: Callable[[dict], bool],
) -> Response:
    """Answer a long store operation (pull, create) with NDJSON progress, or one object when stream is
    false. Errors before `ready(event)` is true are an HTTP error status; later ones an {"error"} line."""
    queue, future = await _in_thread_with_events(work)
    events = _events(queue, future)
    early: list[dict[str, Any]] = []
    try:
        async for event in events:
            early.append(event)
            if ready(event):
                break
    except Exception as exc:  # noqa: BLE001 - turned into the right status
        raise _store_error(exc) from None

    if stream is False:
        last: dict[str, Any] = early[-1] if early else {}
        try:
            async for event in events:
                last = event
        except Exception as exc:  # noqa: BLE001
            raise _store_error(exc) from None
        return JSONResponse({"status": last.get("status", "success")})

    async def body() -> AsyncIterator[str]:
        for event in early:
            yield ndjson(event)
        try:
            async for event in events:
                yield ndjson(event)
        except Exception as exc:  # noqa: BLE001 - after the 200, an error can only be a line
            yield ndjson({"error": str(_store_error(exc))})

    return StreamingResponse(body(), media_type="application/x-ndjson")


# ---- routes ----------------------------------------------------------------------------------------------


@router.post("/api/pull")
async def pull_model(body: PullRequest, request: Request) -> Response:
    store = server_state(request).manager.store
    name = body.model_name()
    try:
        qualified = store.qualify(name)
    except (InvalidModelName, StoreError) as exc:
        raise _store_error(exc) from None

    def work(progress: Callable[[dict[str, Any]], None]) -> LocalModel:
        from ladle.models_hub.demo import DemoNotInstalled, ensure_demo_model, is_demo

        if is_demo(name):  # the demo model comes from an installed package, not a registry
            progress({"status": "preparing the demo model"})
            try:
                model = ensure_demo_model(store)
            except DemoNotInstalled as exc:
                raise ModelNotFound(f"model 'demo' not found: {exc}") from None
            progress({"status": "success"})
            return model
        return pull(store, qualified, progress)

    # Ready once the manifest is in hand (a blob is being fetched) or the pull is done.
    return await _progress_response(work, body.stream, lambda e: e.get("status") != "pulling manifest")


@router.post("/api/create")
async def create_model(body: CreateRequest, request: Request) -> Response:
    manager = server_state(request).manager
    store = manager.store
    name = body.model_name()
    if body.files:
        raise bad_request("files: uploading model files is not supported yet; give a path in `from`", "files")
    if body.adapters:
        raise bad_request("adapters: adapters are not supported yet", "adapters")
    if body.quantize:
        raise bad_request("quantize: quantizing is not supported yet", "quantize")
    base_dir: Path | None = None
    if body.modelfile is not None and body.from_ is None:
        modelfile = body.modelfile
        if body.path:
            base_dir = Path(body.path).expanduser().parent
    else:
        if not body.from_:
            raise bad_request("from: is required (a model name or a path)", "from")
        licenses = [body.license] if isinstance(body.license, str) else list(body.license or [])
        messages = [
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
            for m in body.messages or []
        ]
        try:
            modelfile = format_modelfile(
                body.from_,
                template=body.template,
                system=body.system,
                parameters=body.parameters,
                licenses=licenses,
                messages=messages,
            )
        except Exception as exc:  # noqa: BLE001 - a value that can't be written as a Modelfile
            raise bad_request(f"could not build the model: {exc}") from None
    try:
        target = store.local_name(name)
    except InvalidModelName as exc:
        raise _store_error(exc) from None

    def work(progress: Callable[[dict[str, Any]], None]) -> LocalModel:
        created = store.create(target, modelfile, base_dir=base_dir, progress=progress)
        loaded = manager.models.get(str(created.name))
        if loaded is not None:
            if str(loaded.path) == str(created.model_path):
                loaded.local = created  # new parameters, system, template take effect at once
                loaded._fallback_template = None
            else:
                loaded.keep_alive = 0.0  # other weights under this name: unload when idle
                loaded.expires_at = 0.0
        return created

    # Ready once a layer is being copied or reused: the Modelfile and its FROM have been accepted.
    return await _progress_response(
        work, body.stream, lambda e: e.get("status") != "gathering model components"
    )


@router.post("/api/copy")
async def copy_model(body: CopyRequest, request: Request) -> Response:
    store = server_state(request).manager.store
    for field_name, value in (("source", body.source), ("destination", body.destination)):
        if not value.strip():
            raise bad_request(f"{field_name}: is required", field_name)
    try:
        await asyncio.to_thread(store.copy, body.source, body.destination)
    except (StoreError, ValueError) as exc:
        raise _store_error(exc) from None
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete_model(body: NameRequest, request: Request) -> Response:
    manager = server_state(request).manager
    name = body.model_name()
    try:
        parse_model_name(name)
        removed = await asyncio.to_thread(manager.store.remove, name)
    except (StoreError, ValueError) as exc:
        raise _store_error(exc) from None
    loaded = manager.models.get(str(removed))
    if loaded is not None:
        manager.expire(loaded.name)
    return Response(status_code=200)


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    from ladle.server import ollama_models_routes

    models = []
    for served in await served_models(server_state(request).manager):
        row = served.stored
        if row is not None:
            models.append(
                {
                    "name": row.name,
                    "model": row.model,
                    "modified_at": _iso(row.modified_at),
                    "size": row.size,
                    "digest": row.digest,
                    "details": _details(row.details),
                }
            )
            continue
        loaded = served.loaded  # a model loaded from a path: what the loaded engine says of it
        assert loaded is not None
        models.append(
            {
                "name": loaded.name,
                "model": loaded.name,
                "modified_at": _iso(loaded.loaded_at),
                "size": loaded.size_bytes,
                "digest": ollama_models_routes._digest(loaded),
                "details": ollama_models_routes.details(loaded),
            }
        )
    return {"models": models}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    from ladle.server import ollama_models_routes

    models = []
    for loaded in server_state(request).manager.loaded():
        local = loaded.local
        on_gpu = loaded.engine.engine.device.type == "cuda"
        models.append(
            {
                "name": loaded.name,
                "model": loaded.name,
                "size": local.size if local is not None else loaded.size_bytes,
                "digest": local.digest.removeprefix("sha256:")
                if local is not None
                else ollama_models_routes._digest(loaded),
                "details": _details(local.details)
                if local is not None
                else ollama_models_routes.details(loaded),
                "expires_at": _iso(loaded.expires_at),
                "size_vram": (local.size if local is not None else loaded.size_bytes) if on_gpu else 0,
                "context_length": loaded.max_model_len,
            }
        )
    return {"models": models}


@router.post("/api/show")
async def show(body: ShowRequest, request: Request) -> Any:
    manager = server_state(request).manager
    name = body.model_name()
    loaded = manager.find(name)
    if loaded is not None and loaded.local is None:
        from ladle.server import ollama_models_routes

        return await ollama_models_routes.show(ollama_models_routes.ShowRequest(model=name), request)
    # A path (existing or not) is shown by loading it, which says what is wrong with a missing or broken one.
    if not (path_exists(name) or looks_like_path(name)):
        try:
            local = await asyncio.to_thread(manager.store.resolve, name)
        except (StoreError, ValueError) as exc:
            raise _store_error(exc) from None
        if local is None:
            raise ApiError(404, f"model '{name}' not found")
        return show_response(local, body.verbose)
    from ladle.server import ollama_models_routes

    return await ollama_models_routes.show(ollama_models_routes.ShowRequest(model=name), request)
