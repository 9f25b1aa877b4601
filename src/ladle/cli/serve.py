"""`ladle serve [MODEL ...]`: one HTTP server for the OpenAI and Ollama APIs (uvicorn, run in-process)."""

from __future__ import annotations

import argparse
import logging
import os

from ladle.config import KV_CACHE_DTYPES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def parse_host(value: str | None) -> tuple[str, int]:
    """LADLE_HOST as Ollama reads OLLAMA_HOST: `host`, `host:port`, `:port` or a URL."""
    if not value:
        return DEFAULT_HOST, DEFAULT_PORT
    value = value.split("://", 1)[-1].rstrip("/")
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        return value or DEFAULT_HOST, DEFAULT_PORT
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"LADLE_HOST: {value!r} is not host:port") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"LADLE_HOST: {value!r}: port {number} is out of range (1-65535)")
    return host.strip("[]") or DEFAULT_HOST, number


def _port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1-65535)")
    return number


def add_arguments(p: argparse.ArgumentParser) -> None:
    # LADLE_HOST is read when serve runs (see run), so a bad value is serve's one-line error, not a
    # traceback from every other command that builds this parser.
    p.add_argument(
        "models", nargs="*", metavar="MODEL", help="models to load at start (others load on demand)"
    )
    p.add_argument("--host", default=None, help=f"address to bind (default {DEFAULT_HOST}, or LADLE_HOST)")
    p.add_argument("--port", type=_port, default=None, help=f"port (default {DEFAULT_PORT}, or LADLE_HOST)")
    p.add_argument(
        "--api-key", default=os.environ.get("LADLE_API_KEY"), help="require Authorization: Bearer KEY"
    )
    p.add_argument("--allowed-origins", nargs="*", default=[], help="CORS origins to allow (default: none)")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=list(KV_CACHE_DTYPES),
        help="K/V cache type (default auto: the model dtype; float16 for GGUF models on the CPU; fp8: CUDA)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="schedule the next step while the GPU runs this one (default: on for one CUDA device)",
    )
    p.add_argument("--load-format", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, help="GPUs per model (default 1)")
    p.add_argument(
        "--distributed-executor-backend",
        default="mp",
        choices=["mp", "ray"],
        help="how tensor-parallel ranks start: mp (this host) or ray (a Ray cluster)",
    )
    p.add_argument(
        "--data-parallel-size", "-dp", type=int, default=1, help="engine replicas per model (default 1)"
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> None:
    import uvicorn

    from ladle.models_hub.manager import EngineOptions
    from ladle.models_hub.resolve import resolve_model_path
    from ladle.server.app import build_app
    from ladle.server.state import ServerConfig

    env_host, env_port = parse_host(os.environ.get("LADLE_HOST"))
    args.host = env_host if args.host is None else args.host
    args.port = env_port if args.port is None else args.port
    for name in args.models:
        resolve_model_path(name)  # a typo fails now, with the resolver's message, not later in a log
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    failures: list[str] = []

    def stop_on_start_failure(name: str, error: BaseException) -> None:
        # As vLLM does: a server that cannot serve the model it was started for exits (non-zero), rather
        # than answering /health "ok" without it.
        failures.append(str(error) if name in str(error) else f"could not load {name}: {error}")
        server.should_exit = True

    config = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        allowed_origins=list(args.allowed_origins or []),
        models=list(args.models),
        on_start_failure=stop_on_start_failure,
    )
    options = EngineOptions(
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        load_format=args.load_format,
        seed=args.seed,
        tensor_parallel_size=args.tensor_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        data_parallel_size=args.data_parallel_size,
        async_scheduling=args.async_scheduling,
    )
    app = build_app(config, options)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
        )
    )
    server.run()
    if failures:
        raise RuntimeError(f"{failures[0]} (a model given at start: the server stopped)")
