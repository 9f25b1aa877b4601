"""`ladle run MODEL [PROMPT]`: pull if missing, then a one-shot answer or an interactive chat.

One-shot (a PROMPT, or piped stdin): /api/generate, the answer streamed to stdout and nothing else.
Interactive: /api/chat with the history kept across turns; the commands are in `HELP`. Ctrl-C while an
answer streams closes the HTTP stream (the server aborts the request) and returns to the prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ladle.cli.client import Client, ClientError
from ladle.cli.models import connect, format_show, pull_model, save_request
from ladle.models_hub.resolve import looks_like_path

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

HELP_SET_PARAMETER = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + c            Stop the answer being generated
  Ctrl + d            Exit (on an empty line)
  Ctrl + l            Clear the screen (where the terminal supports it)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a model")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*", help="a prompt for a one-shot answer (else an interactive chat)")
    p.add_argument("--verbose", action="store_true", help="show timings for the answer")
    p.add_argument("--format", default=None, help='the response format (e.g. "json")')
    p.add_argument("--keepalive", default=None, help='how long the model stays loaded (e.g. "5m", "1h")')
    p.add_argument("--insecure", action="store_true", help="use an insecure registry")
    p.add_argument("--nowordwrap", action="store_true", help="accepted for Ollama compatibility")
    p.add_argument(
        "--think",
        nargs="?",
        const="true",
        default=None,
        help="a thinking model thinks first (the default for one; --think=false turns it off)",
    )
    p.add_argument("--hidethinking", action="store_true", help="think, but print only the answer")
    p.set_defaults(handler=run)


@dataclass
class Session:
    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    verbose: bool = False
    keep_alive: str | None = None
    format: str | dict[str, Any] | None = None  # Ollama's `format`: "json" or a JSON schema
    think: bool | None = None  # None: the model's own way; a thinking model thinks by default (below)
    hide_thinking: bool = False

    def request(self, extra: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, **extra}
        if self.format is not None:
            body["format"] = self.format
        if self.think is not None:
            body["think"] = self.think
        if self.options:
            body["options"] = dict(self.options)
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body


def _parse_format(value: str | None) -> str | dict[str, Any] | None:
    """`--format json`, or a JSON schema given inline, as `ollama run --format` takes it."""
    if value is None or value == "json":
        return value
    try:
        schema = json.loads(value)
    except json.JSONDecodeError:
        raise ClientError(f'--format {value!r}: use "json" or a JSON schema') from None
    if not isinstance(schema, dict):
        raise ClientError(f'--format {value!r}: use "json" or a JSON schema object')
    return schema


def _parse_think(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ClientError(f"--think {value!r}: use --think, --think=true or --think=false")


def run(args: argparse.Namespace) -> None:
    response_format = _parse_format(args.format)
    think = _parse_think(args.think)
    prompts = list(args.prompt)
    interactive = sys.stdin.isatty()
    if not interactive:
        piped = sys.stdin.read()
        if piped or not prompts:
            prompts.insert(0, piped)
    interactive = interactive and not prompts
    session = Session(
        model=args.model, verbose=args.verbose, keep_alive=args.keepalive, format=response_format,
        think=think, hide_thinking=args.hidethinking,
    )  # fmt: skip
    with connect() as client:
        info = ensure_model(client, args.model, args.insecure)
        if session.think is None and "thinking" in info.get("capabilities", []):
            session.think = True  # as Ollama's CLI: a thinking model thinks, shown before the answer
        if not interactive:
            generate_once(client, session, " ".join(prompts))
            return
        # The model's own MESSAGEs and SYSTEM are added by the server (as Ollama's does), not repeated here.
        load(client, session)
        chat_loop(client, session, info)


def ensure_model(client: Client, model: str, insecure: bool = False) -> dict[str, Any]:
    """The model's /api/show answer, pulling it first when the store lacks it."""
    try:
        return client.post("/api/show", {"model": model})
    except ClientError as exc:
        if exc.status != 404 or looks_like_path(model):  # a missing or broken file: nothing to pull
            raise
    pull_model(client, model, insecure)
    return client.post("/api/show", {"model": model})


def load(client: Client, session: Session) -> None:
    """Load the model before the first prompt (an empty chat), so the first answer starts at once."""
    client.post("/api/chat", session.request({"messages": [], "stream": False}))


def generate_once(client: Client, session: Session, prompt: str) -> None:
    body = session.request({"prompt": prompt, "stream": True})
    if session.system:
        body["system"] = session.system
    start = time.perf_counter()
    last = _stream_text(client.stream("POST", "/api/generate", body), "response", None, session.hide_thinking)
    if session.verbose and last is not None:
        print_stats(last, time.perf_counter() - start)


def _stream_text(
    events, key: str, answer: list[str] | None = None, hide_thinking: bool = False
) -> dict[str, Any] | None:
    """Print an answer as it streams (collecting it into `answer`); returns the final event. A thinking
    model's thinking comes first, between "Thinking..." and "...done thinking." as Ollama's CLI prints it
    (not at all with hide_thinking). Closing the stream on the way out, Ctrl-C included, is what makes the
    server abort the request."""
    last = None
    ends_with_newline = True
    thinking = False  # inside the printed thinking
    try:
        for event in events:
            last = event
            piece = event.get(key)
            thought = event.get("thinking")
            if isinstance(piece, dict):  # /api/chat: {"message": {"role", "content", "thinking"}}
                piece, thought = piece.get("content"), piece.get("thinking")
            if thought and not hide_thinking:
                if not thinking:
                    sys.stdout.write("Thinking...\n")
                    thinking = True
                sys.stdout.write(thought)
                sys.stdout.flush()
                ends_with_newline = thought.endswith("\n")
            if thinking and (piece or event.get("done")):
                sys.stdout.write(("" if ends_with_newline else "\n") + "...done thinking.\n\n")
                thinking, ends_with_newline = False, True
            if piece:
                sys.stdout.write(piece)
                sys.stdout.flush()
                ends_with_newline = piece.endswith("\n")
                if answer is not None:
                    answer.append(piece)
    finally:
        events.close()
        if not ends_with_newline:
            sys.stdout.write("\n")
        sys.stdout.flush()
    return last


def print_stats(final: dict[str, Any], wall_seconds: float) -> None:
    """What `ollama run --verbose` prints after an answer (durations in the response are nanoseconds)."""

    def seconds(key: str) -> float | None:
        value = final.get(key)
        return value / 1e9 if isinstance(value, (int, float)) else None

    def duration(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value * 1000:.4f}ms" if value < 1 else f"{value:.6f}s"

    total = seconds("total_duration") or wall_seconds
    lines = [f"total duration:       {duration(total)}"]
    if seconds("load_duration") is not None:
        lines.append(f"load duration:        {duration(seconds('load_duration'))}")
    prompt_count = final.get("prompt_eval_count")
    prompt_seconds = seconds("prompt_eval_duration")
    if prompt_count is not None:
        lines.append(f"prompt eval count:    {prompt_count} token(s)")
    if prompt_seconds is not None:
        lines.append(f"prompt eval duration: {duration(prompt_seconds)}")
        if prompt_count and prompt_seconds > 0:
            lines.append(f"prompt eval rate:     {prompt_count / prompt_seconds:.2f} tokens/s")
    eval_count = final.get("eval_count")
    eval_seconds = seconds("eval_duration")
    if eval_count is not None:
        lines.append(f"eval count:           {eval_count} token(s)")
    if eval_seconds is not None:
        lines.append(f"eval duration:        {duration(eval_seconds)}")
        if eval_count and eval_seconds > 0:
            lines.append(f"eval rate:            {eval_count / eval_seconds:.2f} tokens/s")
    print("\n".join(lines), file=sys.stderr)


# ---- interactive ---------------------------------------------------------------------------------------


def read_message(first_prompt: str = ">>> ", more_prompt: str = "... ") -> str | None:
    """One user message: a line, or several between `\"\"\"` marks. None at end of input (Ctrl-D)."""
    try:
        line = input(first_prompt)
    except EOFError:
        return None
    if not line.lstrip().startswith('"""'):
        return line
    text = line.lstrip()[3:]
    if text.rstrip().endswith('"""') and text.strip():
        return text.rstrip()[:-3]
    lines = [text] if text else []
    while True:
        try:
            line = input(more_prompt)
        except EOFError:
            return None
        if line.rstrip().endswith('"""'):
            lines.append(line.rstrip()[:-3])
            return "\n".join(lines).strip("\n") if lines else ""
        lines.append(line)


def chat_loop(client: Client, session: Session, info: dict[str, Any]) -> None:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        if text is None:
            print()
            return
        stripped = text.strip()
        if not stripped:
            continue
        if stripped.startswith("/") and not text.startswith("\n"):
            try:
                done = command(client, session, info, stripped)
            except ClientError as exc:
                print(f"Error: {exc}")
                continue
            if done is True:
                return
            if isinstance(done, dict):
                info = done
            continue
        chat_turn(client, session, text)


def chat_turn(client: Client, session: Session, text: str) -> None:
    messages = list(session.messages)
    if session.system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": session.system})
    messages.append({"role": "user", "content": text})
    body = session.request({"messages": messages, "stream": True})
    answer: list[str] = []
    start = time.perf_counter()
    final = None
    try:
        final = _stream_text(
            client.stream("POST", "/api/chat", body), "message", answer, session.hide_thinking
        )
    except KeyboardInterrupt:
        pass
    except ClientError as exc:
        print(f"Error: {exc}")
        return
    # The answer (whole or cut short) stays in the history so the next turn reads naturally.
    session.messages.append({"role": "user", "content": text})
    session.messages.append({"role": "assistant", "content": "".join(answer)})
    if session.verbose and final is not None:
        print_stats(final, time.perf_counter() - start)
    print()


def command(client: Client, session: Session, info: dict[str, Any], line: str) -> bool | dict | None:
    """Run a /command. True: leave the chat; a dict: the new model's /api/show answer."""
    words = line.split()
    name = words[0].lower()
    if name in ("/bye", "/exit"):
        return True
    if name in ("/?", "/help"):
        topic = words[1].lower() if len(words) > 1 else ""
        print(
            {"set": HELP_SET, "/set": HELP_SET, "show": HELP_SHOW, "/show": HELP_SHOW}.get(
                topic, HELP_SHORTCUTS if topic.startswith("shortcut") else HELP
            )
        )
        return None
    if name == "/clear":
        session.messages = []
        print("Cleared session context")
        return None
    if name == "/set":
        set_command(session, line, words)
        return None
    if name == "/show":
        show_command(session, info, words)
        return None
    if name == "/load":
        if len(words) != 2:
            print("Usage:\n  /load <modelname>")
            return None
        print(f"Loading model '{words[1]}'")
        new_info = ensure_model(client, words[1])
        session.model = words[1]
        session.messages = []
        session.system = None
        session.options = {}
        load(client, session)
        return new_info
    if name == "/save":
        if len(words) != 2:
            print("Usage:\n  /save <modelname>")
            return None
        body = save_request(words[1], session.model, session.system, session.options, session.messages)
        for _ in client.stream("POST", "/api/create", body):
            pass
        print(f"Created new model '{words[1]}'")
        return None
    print(f"Unknown command '{words[0]}'. Type /? for help")
    return None


def set_command(session: Session, line: str, words: list[str]) -> None:
    if len(words) < 2:
        print(HELP_SET)
        return
    what = words[1].lower()
    if what == "parameter":
        if len(words) < 4:
            print(HELP_SET_PARAMETER)
            return
        key, values = words[2], words[3:]
        try:
            session.options[key] = parse_option(key, values)
        except ValueError as exc:
            print(f"Couldn't set parameter: {exc}")
            return
        print(f"Set parameter '{key}' to '{', '.join(values)}'")
    elif what == "system":
        text = line.split(None, 2)[2] if len(words) > 2 else ""
        text = text.strip()
        if text.startswith('"""') and text.endswith('"""') and len(text) >= 6:
            text = text[3:-3]
        elif len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
        session.system = text or None
        session.messages = [m for m in session.messages if m.get("role") != "system"]
        print("Set system message.")
    elif what == "verbose":
        session.verbose = True
        print("Set 'verbose' mode.")
    elif what == "quiet":
        session.verbose = False
        print("Set 'quiet' mode.")
    elif what in ("think", "nothink"):
        session.think = what == "think"
        print("Set 'think' mode." if session.think else "Set 'nothink' mode.")
    else:
        print(f"Unknown command '/set {words[1]}'. Type /? for help")


def parse_option(key: str, values: list[str]) -> Any:
    """A /set parameter value, typed the way a Modelfile PARAMETER is (unknown names are refused)."""
    from ladle.store import ModelfileError
    from ladle.store.modelfile import parse_parameters

    try:
        parsed = parse_parameters([(key, value, None) for value in values])
    except ModelfileError as exc:
        raise ValueError(str(exc)) from None
    if key not in parsed:
        raise ValueError(f"parameter {key!r} is not used by ladle")
    value = parsed[key]
    return value if isinstance(value, list) else value


def show_command(session: Session, info: dict[str, Any], words: list[str]) -> None:
    if len(words) < 2:
        print(HELP_SHOW)
        return
    what = words[1].lower()
    if what == "info":
        print(format_show(info))
    elif what == "license":
        print(info.get("license") or "No license was specified for this model.")
    elif what == "modelfile":
        print(info.get("modelfile") or "")
    elif what == "parameters":
        print("Model defined parameters:")
        print(info.get("parameters") or "No parameters were specified for this model.")
        if session.options:
            print("\nUser defined parameters:")
            for key, value in session.options.items():
                print(f"{key:<30} {value}")
    elif what == "system":
        print(session.system or info.get("system") or "No system message was specified for this model.")
    elif what == "template":
        print(info.get("template") or "No prompt template was specified for this model.")
    else:
        print(f"Unknown command '/show {words[1]}'. Type /? for help")
