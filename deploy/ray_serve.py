"""Ray Serve: K ladle replicas behind one OpenAI + Ollama endpoint, with autoscaling.

Each replica is one ladle HTTP app (the same routes as `ladle serve`: /v1/..., /api/..., /health,
/metrics) with its own engine; Serve's proxy spreads requests over the replicas and scales their number
between min_replicas and max_replicas to keep about target_ongoing_requests in flight per replica. Every
response carries `x-ladle-replica`, so a client (or a test) can see which replica answered.

A replica uses tensor_parallel_size GPUs (ray_actor_options num_gpus) and runs its TP ranks as local
processes on its node ("mp"): Serve gives the replica those GPUs as CUDA_VISIBLE_DEVICES.

Run:
    serve run deploy.ray_serve:app_builder model=/models/llama min_replicas=1 max_replicas=4
    python deploy/ray_serve.py MODEL --num-replicas 2            # fixed number of replicas
    python deploy/ray_serve.py MODEL --min-replicas 1 --max-replicas 4 --target-ongoing-requests 16
In Kubernetes, deploy/kuberay/rayservice.yaml points serveConfigV2 at `ray_serve:app_builder`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ray import serve

ENGINE_FIELDS = ("dtype", "device", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "load_format")


def _replica_header(app: Any, replica: str) -> Any:
    async def asgi(scope: dict, receive: Any, send: Any) -> None:
        async def tagged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-ladle-replica", replica.encode())],
                }
            await send(message)

        await app(scope, receive, tagged_send if scope["type"] == "http" else send)

    return asgi


@serve.ingress()
class LadleReplica:
    """One replica: ladle's server app for `model` (loaded at start; /health answers 503 until ready)."""

    def __init__(self, model: str, engine: dict[str, Any], api_key: str | None = None) -> None:
        try:
            from ladle.models_hub.manager import EngineOptions
            from ladle.server.app import build_app
            from ladle.server.state import ServerConfig
        except ImportError as exc:
            raise RuntimeError(f"this ladle build has no HTTP server ({exc}); install ladle with it") from exc
        context = serve.get_replica_context()
        self.replica = f"{context.replica_tag if hasattr(context, 'replica_tag') else context.replica_id}"
        self.started = time.time()
        options = EngineOptions(**{k: v for k, v in engine.items() if hasattr(EngineOptions, k)})
        self.ladle_app = build_app(ServerConfig(api_key=api_key, models=[model]), options)
        self.model = model

    def __serve_build_asgi_app__(self) -> Any:
        return _replica_header(self.ladle_app, self.replica)

    def replica_stats(self) -> dict[str, Any]:
        """This replica's counters (the numbers its /metrics exports), for checks across replicas."""
        manager = self.ladle_app.state.ladle.manager
        models = {m.name: m.engine.stats for m in manager.loaded()}
        return {
            "replica": self.replica,
            "pid": os.getpid(),
            "models": {
                name: {"generation_tokens": s.generation_tokens, "prompt_tokens": s.prompt_tokens}
                for name, s in models.items()
            },
        }


def build(
    model: str,
    *,
    num_replicas: int | None = None,
    min_replicas: int = 1,
    max_replicas: int = 1,
    target_ongoing_requests: float = 16,
    tensor_parallel_size: int = 1,
    num_cpus: float = 1,
    max_ongoing_requests: int = 256,
    api_key: str | None = None,
    **engine: Any,
) -> Any:
    """The Serve application: a fixed num_replicas, or autoscaling between min and max replicas."""
    engine = {k: v for k, v in engine.items() if k in ENGINE_FIELDS and v is not None}
    engine["tensor_parallel_size"] = tensor_parallel_size
    options: dict[str, Any] = {
        "name": "ladle",
        "max_ongoing_requests": max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": num_cpus,
            "num_gpus": tensor_parallel_size if _wants_gpu(engine) else 0,
        },
    }
    if num_replicas is not None:
        options["num_replicas"] = num_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        }
    return serve.deployment(LadleReplica).options(**options).bind(model, engine, api_key)


def _wants_gpu(engine: dict[str, Any]) -> bool:
    return str(engine.get("device", "auto")) in ("auto", "cuda") or str(engine.get("device")).startswith(
        "cuda"
    )


def app_builder(args: dict[str, str]) -> Any:
    """Serve's application builder (`serve run deploy.ray_serve:app_builder key=value ...`)."""
    ints = ("num_replicas", "min_replicas", "max_replicas", "tensor_parallel_size", "max_ongoing_requests")
    ints += ("max_model_len", "max_num_seqs", "max_num_batched_tokens")
    kwargs: dict[str, Any] = {}
    for key, value in args.items():
        if key in ints:
            kwargs[key] = int(value)
        elif key in ("target_ongoing_requests", "num_cpus"):
            kwargs[key] = float(value)
        else:
            kwargs[key] = value
    return build(kwargs.pop("model"), **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description="ladle replicas behind one endpoint on Ray Serve")
    p.add_argument("model")
    p.add_argument("--num-replicas", type=int, default=None, help="fixed replicas (default: autoscale)")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=1)
    p.add_argument("--target-ongoing-requests", type=float, default=16)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=11434)
    args = p.parse_args()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(
        build(
            args.model,
            num_replicas=args.num_replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
            tensor_parallel_size=args.tensor_parallel_size,
            device=args.device,
        ),
        route_prefix="/",
        blocking=True,
    )


if __name__ == "__main__":
    main()
