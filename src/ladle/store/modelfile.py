"""Modelfiles, parsed the way Ollama parses them.

    # comment
    FROM llama3.2                 a local model name, a .gguf file, or a Hugging Face folder
    PARAMETER temperature 0.7     typed like Ollama's options; `stop` may repeat
    TEMPLATE \"\"\"{{ .Prompt }}\"\"\"    values may be bare (rest of the line), "quoted" or \"\"\"triple quoted\"\"\"
    SYSTEM You are a pirate.      quoted values may span lines
    LICENSE MIT                   may repeat
    MESSAGE user Hi               roles: system, user, assistant
    ADAPTER ./lora.gguf           parsed, but Store.create answers that adapters are not supported yet

Quoting follows Ollama's rule: a value ends at the first end of line where it reads as complete, i.e. it
is bare, or starts and ends with `"`, or starts and ends with `\"\"\"`; the quotes are removed. Commands are
case-insensitive. Errors are ModelfileError with the line number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ladle.store.errors import ModelfileError

logger = logging.getLogger(__name__)

COMMANDS = (
    "from",
    "parameter",
    "template",
    "system",
    "license",
    "message",
    "adapter",
    # Newer Ollama commands: parsed so their Modelfiles read, refused by create() where they matter.
    "draft",
    "renderer",
    "parser",
    "requires",
)
MESSAGE_ROLES = ("system", "user", "assistant")

# Ollama's options (api.Options and api.Runner) and their types.
_INT, _FLOAT, _BOOL, _LIST = "int", "float", "bool", "list"
PARAMETER_TYPES: dict[str, str] = {
    "num_keep": _INT,
    "seed": _INT,
    "num_predict": _INT,
    "top_k": _INT,
    "top_p": _FLOAT,
    "min_p": _FLOAT,
    "typical_p": _FLOAT,
    "repeat_last_n": _INT,
    "temperature": _FLOAT,
    "repeat_penalty": _FLOAT,
    "presence_penalty": _FLOAT,
    "frequency_penalty": _FLOAT,
    "stop": _LIST,
    "num_ctx": _INT,
    "num_batch": _INT,
    "num_gpu": _INT,
    "main_gpu": _INT,
    "use_mmap": _BOOL,
    "num_thread": _INT,
}
# Ollama accepts these with a warning and drops them.
DEPRECATED_PARAMETERS = (
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "tfs_z",
    "numa",
)


@dataclass(frozen=True)
class Command:
    name: str  # lower case; FROM is "from"
    args: str
    line: int
    key: str = ""  # the parameter name (PARAMETER) or the role (MESSAGE)


@dataclass
class Modelfile:
    commands: list[Command] = field(default_factory=list)

    def first(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    def last(self, name: str) -> Command | None:
        return next((c for c in reversed(self.commands) if c.name == name), None)

    def all(self, name: str) -> list[Command]:
        return [c for c in self.commands if c.name == name]

    @property
    def from_(self) -> str:
        command = self.last("from")
        assert command is not None  # parse_modelfile guarantees a FROM
        return command.args

    @property
    def template(self) -> str | None:
        command = self.last("template")
        return command.args if command else None

    @property
    def system(self) -> str | None:
        command = self.last("system")
        return command.args if command else None

    @property
    def licenses(self) -> list[str]:
        return [c.args for c in self.all("license")]

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": c.key, "content": c.args} for c in self.all("message")]

    @property
    def parameters(self) -> dict[str, Any]:
        """PARAMETER lines as typed options; raises ModelfileError for unknown names or bad values."""
        return parse_parameters([(c.key, c.args, c.line) for c in self.all("parameter")])


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text; ModelfileError (with the line) when it is not a valid Modelfile."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        line_no = i + 1
        line = lines[i].strip(" \t")
        i += 1
        if not line or line.startswith("#"):
            continue
        word, rest = _split_word(line)
        name = word.lower()
        if name not in COMMANDS or not word.isalpha():
            raise ModelfileError(
                f"unknown command {word!r}; a Modelfile takes FROM, PARAMETER, TEMPLATE, SYSTEM, "
                "LICENSE, MESSAGE, ADAPTER",
                line_no,
            )
        key = ""
        if name in ("parameter", "message"):
            key, rest = _split_word(rest)
            if not key:
                what = "a parameter name" if name == "parameter" else "a role"
                raise ModelfileError(f"{word.upper()} needs {what} and a value", line_no)
            if name == "message":
                if key not in MESSAGE_ROLES:
                    raise ModelfileError(
                        f"message role must be one of 'system', 'user', 'assistant', not {key!r}", line_no
                    )
            elif not all(c.isalnum() or c == "_" for c in key):
                raise ModelfileError(f"invalid parameter name {key!r}", line_no)
        # Ollama's rule: a value ends at the first end of line where it reads as complete.
        value = rest
        while True:
            complete, unquoted = _unquote(value.strip(" \t"))
            if complete:
                break
            if i >= len(lines):
                raise ModelfileError(f"unterminated quote in {word.upper()} (no closing quote)", line_no)
            value += "\n" + lines[i]
            i += 1
        if not unquoted and name in ("from", "parameter", "adapter", "draft"):
            raise ModelfileError(f"{word.upper()} needs a value", line_no)
        commands.append(Command(name=name, args=unquoted, line=line_no, key=key))
    if not any(c.name == "from" for c in commands):
        raise ModelfileError("no FROM line: a Modelfile must say which model it builds on")
    return Modelfile(commands)


def parse_parameters(items: list[tuple[str, str, int | None]]) -> dict[str, Any]:
    """Type PARAMETER values like Ollama: ints, floats, bools, and `stop` collected into a list."""
    params: dict[str, Any] = {}
    for key, raw, line in items:
        kind = PARAMETER_TYPES.get(key)
        if kind is None:
            if key in DEPRECATED_PARAMETERS:
                logger.warning("parameter %s is deprecated and ignored", key)
                continue
            raise ModelfileError(f"unknown parameter {key!r}", line)
        if kind == _LIST:
            params.setdefault(key, []).append(raw)
            continue
        try:
            if kind == _INT:
                params[key] = int(raw)
            elif kind == _FLOAT:
                params[key] = float(raw)
            else:
                params[key] = _parse_bool(raw)
        except ValueError:
            raise ModelfileError(f"invalid {kind} value {raw!r} for parameter {key}", line) from None
    return params


def _parse_bool(raw: str) -> bool:
    # Go's strconv.ParseBool, which Ollama uses.
    if raw in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if raw in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(raw)


def _split_word(text: str) -> tuple[str, str]:
    text = text.lstrip(" \t")
    for index, char in enumerate(text):
        if char in " \t":
            return text[:index], text[index + 1 :]
    return text, ""


def _unquote(value: str) -> tuple[bool, str]:
    """(complete, value without its quotes), by Ollama's rules."""
    if value.startswith('"""'):
        if len(value) >= 6 and value.endswith('"""'):
            return True, value[3:-3]
        return False, ""
    if value.startswith('"'):
        if len(value) >= 2 and value.endswith('"'):
            return True, value[1:-1]
        return False, ""
    return True, value


def format_modelfile(
    from_: str,
    *,
    template: str | None = None,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    licenses: list[str] | None = None,
    messages: list[dict[str, str]] | None = None,
) -> str:
    """A Modelfile that rebuilds a model (what `ladle show --modelfile` prints), quoting like Ollama."""
    lines = [f"FROM {from_}"]
    if template:
        lines.append(f"TEMPLATE {_quote(template)}")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    for key, value in (parameters or {}).items():
        for item in value if isinstance(value, list) else [value]:
            text = str(item).lower() if isinstance(item, bool) else str(item)
            lines.append(f"PARAMETER {key} {_quote(text)}")
    for license_text in licenses or []:
        lines.append(f"LICENSE {_quote(license_text)}")
    for message in messages or []:
        lines.append(f"MESSAGE {message.get('role', 'user')} {_quote(message.get('content', ''))}")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    if "\n" in value or value.startswith(" ") or value.endswith(" ") or value.startswith('"'):
        return f'"""{value}"""'
    return value
