"""The `ladle` command. Each subcommand lives in its own module; this file only wires them up."""

from __future__ import annotations

import argparse
import sys

from ladle.version import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ladle", description="Run and serve large language models.")
    parser.add_argument("--version", "-v", action="version", version=f"ladle version {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from ladle.cli import serve

    serve_parser = sub.add_parser("serve", help="serve the OpenAI and Ollama APIs on one port")
    serve.add_arguments(serve_parser)
    serve_parser.set_defaults(handler=serve.run)

    bench = sub.add_parser("bench", help="benchmark the engine")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    from ladle.bench import throughput

    tp = bench_sub.add_parser("throughput", help="offline throughput (like vllm bench throughput)")
    throughput.add_arguments(tp)
    tp.set_defaults(handler=throughput.run)

    from ladle.bench import serve as bench_serve

    bs = bench_sub.add_parser(
        "serve", help="load a running server through its OpenAI route (like vllm bench serve)"
    )
    bench_serve.add_arguments(bs)
    bs.set_defaults(handler=bench_serve.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        handler(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
