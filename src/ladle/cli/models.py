"""`ladle pull | list | ps | show | rm | cp | stop | create`: the model commands, thin clients of /api/*."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ladle.cli.client import Client, ClientError
from ladle.cli.format import human_bytes, human_time, table
from ladle.cli.progress import show_progress


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="pull a model from a registry")
    p.add_argument("model")
    p.add_argument("--insecure", action="store_true", help="use an insecure registry")
    p.set_defaults(handler=pull)

    p = sub.add_parser("list", aliases=["ls"], help="list models")
    p.set_defaults(handler=list_models)

    p = sub.add_parser("ps", help="list running models")
    p.set_defaults(handler=ps)

    p = sub.add_parser("show", help="show information for a model")
    p.add_argument("model")
    for flag, what in (
        ("--license", "the license"),
        ("--modelfile", "the Modelfile"),
        ("--parameters", "the parameters"),
        ("--system", "the system message"),
        ("--template", "the template"),
    ):
        p.add_argument(flag, action="store_true", help=f"show {what} of a model")
    p.add_argument("--verbose", "-v", action="store_true", help="show the full model metadata")
    p.set_defaults(handler=show)

    p = sub.add_parser("rm", help="remove a model")
    p.add_argument("model", nargs="+")
    p.set_defaults(handler=remove)

    p = sub.add_parser("cp", help="copy a model")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(handler=copy)

    p = sub.add_parser("stop", help="stop a running model")
    p.add_argument("model")
    p.set_defaults(handler=stop)

    p = sub.add_parser("create", help="create a model from a Modelfile")
    p.add_argument("model")
    p.add_argument("--file", "-f", default=None, help="the Modelfile (default: ./Modelfile)")
    p.set_defaults(handler=create)


def connect() -> Client:
    client = Client()
    client.ensure_server()
    return client


def pull_model(client: Client, model: str, insecure: bool = False) -> None:
    events = client.stream("POST", "/api/pull", {"model": model, "insecure": insecure, "stream": True})
    show_progress(events)


def pull(args: argparse.Namespace) -> None:
    with connect() as client:
        pull_model(client, args.model, args.insecure)


def list_models(args: argparse.Namespace) -> None:
    with connect() as client:
        models = client.get("/api/tags").get("models") or []
    rows = [
        [
            m.get("name", ""),
            (m.get("digest") or "")[:12],
            human_bytes(int(m.get("size") or 0)),
            human_time(m.get("modified_at")),
        ]
        for m in models
    ]
    print(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))


def ps(args: argparse.Namespace) -> None:
    with connect() as client:
        models = client.get("/api/ps").get("models") or []
    rows = []
    for m in models:
        size = int(m.get("size") or 0)
        vram = int(m.get("size_vram") or 0)
        if vram == 0:
            processor = "100% CPU"
        elif vram >= size:
            processor = "100% GPU"
        else:
            cpu = round(100 * (size - vram) / size)
            processor = f"{cpu}%/{100 - cpu}% CPU/GPU"
        until = human_time(m.get("expires_at"), forever="Forever")
        if until.endswith(" ago"):
            until = "Stopping..."  # expired: unloading as soon as its last request ends
        rows.append(
            [
                m.get("name", ""),
                (m.get("digest") or "")[:12],
                human_bytes(size),
                processor,
                str(m.get("context_length") or ""),
                until,
            ]
        )
    print(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))


def show(args: argparse.Namespace) -> None:
    with connect() as client:
        info = client.post("/api/show", {"model": args.model, "verbose": args.verbose})
    flags = [f for f in ("license", "modelfile", "parameters", "system", "template") if getattr(args, f)]
    if len(flags) > 1:
        raise ClientError("only one of --license, --modelfile, --parameters, --system, --template at a time")
    if flags:
        text = info.get(flags[0]) or ""
        if not text and flags[0] != "modelfile":
            text = f"No {flags[0]} was specified for this model."
        print(text.rstrip("\n"))
        return
    print(format_show(info))


def format_show(info: dict[str, Any]) -> str:
    """The summary `ollama show MODEL` prints: model facts, parameters, system, license."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = model_info.get("general.architecture") or details.get("family") or ""
    rows = [["architecture", str(arch)]]
    count = model_info.get("general.parameter_count")
    rows.append(
        ["parameters", _human_count(count) if isinstance(count, int) else details.get("parameter_size", "")]
    )
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
        value = model_info.get(f"{arch}.{key}")
        if value is not None:
            rows.append([label, str(value)])
    if details.get("quantization_level"):
        rows.append(["quantization", details["quantization_level"]])
    if isinstance(info.get("memory_bytes"), int):
        rows.append(["memory", f"{human_bytes(info['memory_bytes'])} (weights once loaded)"])
    sections = [("Model", rows)]

    caps = info.get("capabilities") or []
    if caps:
        sections.append(("Capabilities", [[c] for c in caps]))
    params = (info.get("parameters") or "").strip()
    if params:
        param_rows = []
        for line in params.splitlines():
            key, _, value = line.strip().partition(" ")
            param_rows.append([key, value.strip()])
        sections.append(("Parameters", param_rows))
    if info.get("system"):
        sections.append(("System", [[line] for line in _first_lines(info["system"])]))
    if info.get("license"):
        sections.append(("License", [[line] for line in _first_lines(info["license"])]))

    out = []
    for title, section_rows in sections:
        out.append(f"  {title}")
        body = table([""] * len(section_rows[0]), section_rows).splitlines()[1:]
        out.extend(f"    {line}" for line in body)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _first_lines(text: str, limit: int = 2) -> list[str]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[:limit] + (["..."] if len(lines) > limit else [])


def _human_count(n: int) -> str:
    from ladle.store.details import human_number

    return human_number(n)


def remove(args: argparse.Namespace) -> None:
    with connect() as client:
        for model in args.model:
            # Unload it first, as `ollama rm` does; a model that is not loaded is fine.
            try:
                client.post("/api/generate", {"model": model, "keep_alive": 0})
            except ClientError:
                pass
            client.delete("/api/delete", {"model": model})
            print(f"deleted '{model}'")


def copy(args: argparse.Namespace) -> None:
    with connect() as client:
        client.post("/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")


def stop(args: argparse.Namespace) -> None:
    with connect() as client:
        ps_models = client.get("/api/ps").get("models") or []
        loaded = {m.get("name") for m in ps_models} | {m.get("model") for m in ps_models}
        if args.model not in loaded and f"{args.model}:latest" not in loaded:
            raise ClientError(f'couldn\'t find model "{args.model}" to stop')
        client.post("/api/generate", {"model": args.model, "keep_alive": 0})


def create(args: argparse.Namespace) -> None:
    body = create_request(args.model, args.file)
    with connect() as client:
        show_progress(client.stream("POST", "/api/create", body))


def create_request(model: str, file: str | None) -> dict[str, Any]:
    """Ollama's JSON form of /api/create from a Modelfile. A relative FROM path is read from the
    Modelfile's folder (as Ollama does), so it is sent as an absolute path."""
    from ladle.store import ModelfileError, parse_modelfile

    path = Path(file) if file else Path("Modelfile")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientError(f"no Modelfile at {path}" + ("" if file else "; give one with -f")) from None
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    try:
        parsed = parse_modelfile(text)
        if parsed.first("adapter") is not None:
            raise ModelfileError("ADAPTER: adapters are not supported yet", parsed.first("adapter").line)
        parameters = parsed.parameters
    except ModelfileError as exc:
        raise ClientError(f"{path}: {exc}") from None
    source = parsed.from_
    candidate = Path(source).expanduser()
    if not candidate.is_absolute():
        candidate = path.resolve().parent / candidate
    if candidate.exists():
        source = str(candidate)
    body: dict[str, Any] = {"model": model, "from": source, "stream": True}
    if parsed.template is not None:
        body["template"] = parsed.template
    if parsed.system is not None:
        body["system"] = parsed.system
    if parameters:
        body["parameters"] = parameters
    if parsed.licenses:
        body["license"] = parsed.licenses
    if parsed.messages:
        body["messages"] = parsed.messages
    return body


def save_request(
    model: str,
    base: str,
    system: str | None,
    options: dict[str, Any],
    messages: list[dict[str, Any]],
) -> dict[str, Any]:
    """/api/create for `/save MODEL` in a chat: the current model with the session's system, parameters and
    messages layered on top."""
    body: dict[str, Any] = {"model": model, "from": base, "stream": True}
    if system:
        body["system"] = system
    if options:
        body["parameters"] = options
    history = [m for m in messages if m.get("role") in ("user", "assistant", "system")]
    if history:
        body["messages"] = [{"role": m["role"], "content": str(m.get("content", ""))} for m in history]
    return body
