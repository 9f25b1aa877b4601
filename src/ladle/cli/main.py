"""The `ladle` command. Each subcommand lives in its own module; this file only wires them up."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ladle.version import __version__


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (`Error: ...`, exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"Error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ladle", description="Run and serve large language models.")
    parser.add_argument("--version", "-v", action="version", version=f"ladle version {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from ladle.cli import serve

    serve_parser = sub.add_parser("serve", help="serve the OpenAI and Ollama APIs on one port")
    serve.add_arguments(serve_parser)
    serve_parser.set_defaults(handler=serve.run)

    from ladle.cli import models, run

    run.add_parser(sub)
    models.add_parsers(sub)

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

    from ladle.bench import latency

    lat = bench_sub.add_parser("latency", help="decode latency vs the bandwidth roofline, TTFT, batch sweep")
    latency.add_arguments(lat)
    lat.set_defaults(handler=latency.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `ladle run MODEL --verbose why is the sky blue`: words after a flag are still the prompt.
        if getattr(args, "command", None) == "run" and not any(word.startswith("-") for word in extra):
            args.prompt = [*args.prompt, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1  # `ladle run ... | head`: the reader left
    except Exception as exc:  # noqa: BLE001 - the user gets one line, never a traceback
        print(f"Error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
