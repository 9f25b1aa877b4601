"""What every route reaches through `request.app.state.ladle`: the server's config, models and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from ladle.models_hub.manager import ModelManager
from ladle.server.metrics import ServerMetrics


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 11434
    api_key: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # loaded at start
    # Called with (model, error) when a model given at start fails to load; `ladle serve` stops then.
    on_start_failure: Callable[[str, BaseException], None] | None = None


@dataclass
class ServerState:
    config: ServerConfig
    manager: ModelManager
    metrics: ServerMetrics
    started_at: float = field(default_factory=time.time)


def server_state(request: Request) -> ServerState:
    return request.app.state.ladle
