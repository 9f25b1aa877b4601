"""The one ASGI app that serves both APIs: build_app() wires routes, errors, auth, CORS and model loading."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ladle.models_hub.manager import EngineOptions, ModelManager
from ladle.server import ollama_models_routes, ollama_routes, openai_routes, ops_routes, store_routes
from ladle.server.errors import error_body, install_error_handlers
from ladle.server.metrics import ServerMetrics
from ladle.server.state import ServerConfig, ServerState
from ladle.version import __version__

logger = logging.getLogger(__name__)

# Routes anyone may call even with an API key set: liveness checks need no secret.
_PUBLIC_PATHS = frozenset({"/", "/health"})


class ApiKeyMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so streaming responses and disconnect detection are untouched."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PUBLIC_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        import json

        body = json.dumps(
            error_body(scope["path"], 401, "invalid or missing API key (Authorization: Bearer KEY)")
        )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def build_app(config: ServerConfig | None = None, options: EngineOptions | None = None) -> FastAPI:
    config = config or ServerConfig()
    manager = ModelManager(options)
    metrics = ServerMetrics(lambda: [(m.name, m.engine.stats) for m in manager.loaded()])
    manager.on_finished = metrics.observe_finished
    state = ServerState(config=config, manager=manager, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start listening at once; /health says 503 until the models given on the command line are loaded.
        loads = [manager.start_load(name) for name in config.models]
        for name, task in zip(config.models, loads):
            task.add_done_callback(functools.partial(_start_load_done, name, config.on_start_failure))
        try:
            yield
        finally:
            for task in loads:
                task.cancel()
            manager.shutdown()

    app = FastAPI(title="ladle", version=__version__, lifespan=lifespan)
    app.state.ladle = state
    install_error_handlers(app)
    # The store's routes first: its /api/tags, /api/show, /api/ps cover stored models as well as loaded paths.
    app.include_router(store_routes.router)
    for module in (openai_routes, ollama_routes, ollama_models_routes, ops_routes):
        app.include_router(module.router)
    app.add_middleware(JsonBodyMiddleware)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    if config.allowed_origins:
        # Added last, so it runs first: a browser's preflight is answered before the key is checked.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.allowed_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=False,
        )
    return app


def _start_load_done(name: str, on_failure, task: asyncio.Future) -> None:
    if task.cancelled() or task.exception() is None:
        return
    logger.error("could not load %s, given at start: %s", name, task.exception())
    if on_failure is not None:
        on_failure(name, task.exception())


class JsonBodyMiddleware:
    """Ollama accepts a JSON body whatever Content-Type says (curl -d sends form encoding); every POST route
    here takes JSON, so a missing or form Content-Type is read as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "DELETE"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if not content_type or content_type.startswith(
                (b"application/x-www-form-urlencoded", b"text/plain")
            ):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
