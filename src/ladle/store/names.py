"""Model names: what `ladle pull NAME`, `model=` and the HTTP `model` field accept.

Forms (Ollama's, plus Hugging Face repositories):

    name[:tag]                      Ollama registry, namespace `library`, tag `latest`
    ns/name:tag                     Ollama registry, namespace `ns` (a tag makes it a registry name)
    host/ns/name[:tag]              the registry at `host` (tag `latest`)
    hf.co/org/repo[:quant]          a GGUF repository on Hugging Face; `latest` picks Q4_K_M like Ollama
    org/repo                        a safetensors repository on Hugging Face (vLLM's `model="org/repo"`)
    huggingface.co/org/repo[:rev]   the same, fully spelled out (rev defaults to `main`)

The one ambiguity is a bare `org/repo` with no tag: Ollama reads it as `org/repo:latest` from its registry,
vLLM as a Hugging Face repository. ladle settles it so that neither kind of user is surprised:

1. a model already stored locally as `org/repo:latest` (ladle's store or Ollama's) wins;
2. otherwise a bare `org/repo` is the Hugging Face safetensors repository;
3. `library/name` (Ollama's own namespace) and any `ns/name:tag` are always registry names.

`parse_model_name` applies rules 2-3 (it never touches the disk) and marks the result `ambiguous`;
`Store.qualify` applies rule 1. Names a user gives to a new local model (`cp`, `create`) take the registry
reading, so that `ladle cp x me/y` stores `me/y:latest` and `me/y` then finds it by rule 1.

Validation keeps names safe as path components under the store: every part starts with a letter, digit
or `_`, uses only letters, digits, `_`, `-`, `.` (no `.` in a namespace, no `..` anywhere), is at most
128 characters (Ollama's limit), and the whole name is at most 256.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

from ladle.store.errors import InvalidModelName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
HF_GGUF_HOST = "hf.co"
HF_REPO_HOST = "huggingface.co"
DEFAULT_REVISION = "main"
# Ollama picks this quantization when an hf.co name has no tag (or `latest`).
DEFAULT_QUANT = "Q4_K_M"

MAX_PART_LENGTH = 128
MAX_NAME_LENGTH = 256

NameKind = Literal["registry", "hf-gguf", "hf-repo"]

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*)(?:\.[A-Za-z0-9\-]+)*(?::[0-9]{1,5})?")
_ALLOWED = re.compile(r"[A-Za-z0-9_.\-:/]")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str
    # A bare `org/repo`: read as a Hugging Face repository unless a local `org/repo:latest` exists.
    ambiguous: bool = field(default=False, compare=False)

    @property
    def kind(self) -> NameKind:
        host = self.host.lower()
        if host == HF_GGUF_HOST:
            return "hf-gguf"
        if host == HF_REPO_HOST:
            return "hf-repo"
        return "registry"

    @property
    def repo_id(self) -> str:
        """`namespace/model`: the repository on a registry or on Hugging Face."""
        return f"{self.namespace}/{self.model}"

    @property
    def full(self) -> str:
        """The fully qualified name, `host/namespace/model:tag`; always parses back to this name."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def parts(self) -> tuple[str, str, str, str]:
        """host, namespace, model, tag: the path of the manifest under `manifests/`."""
        return (self.host, self.namespace, self.model, self.tag)

    def as_registry(self) -> ModelName:
        """The Ollama-registry reading of an ambiguous bare `ns/name` (tag `latest`)."""
        if not self.ambiguous:
            return self
        return ModelName(DEFAULT_HOST, self.namespace, self.model, DEFAULT_TAG)

    def with_tag(self, tag: str) -> ModelName:
        _check_part(tag, "tag", _PART, self.full)
        return replace(self, tag=tag, ambiguous=False)

    def __str__(self) -> str:
        """The shortest name that reads back the same, like Ollama's DisplayShortest."""
        kind = self.kind
        if kind == "hf-repo":
            if self.tag == DEFAULT_REVISION:
                return self.repo_id
            return f"{self.host}/{self.repo_id}:{self.tag}"
        if kind == "registry" and self.host.lower() == DEFAULT_HOST:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.repo_id}:{self.tag}"
        return self.full


def parse_model_name(text: str) -> ModelName:
    """Parse a model reference (see the module docstring); raise InvalidModelName with a one-line reason."""
    if not isinstance(text, str):
        raise InvalidModelName(f"model name must be a string, not {type(text).__name__}")
    name = text.strip()
    if not name:
        raise InvalidModelName("model name is empty")
    for scheme in ("https://", "http://"):
        if name.startswith(scheme):
            name = name[len(scheme) :]
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidModelName(f"model name is too long ({len(name)} characters, at most {MAX_NAME_LENGTH})")
    if name.startswith(("/", ".", "~")) or "\\" in name or "/../" in f"/{name}/" or "/./" in f"/{name}/":
        raise InvalidModelName(f"invalid model name {name!r}: looks like a file path, not a model name")
    for char in name:
        if not _ALLOWED.fullmatch(char):
            raise InvalidModelName(
                f"invalid model name {name!r}: character {char!r} is not allowed "
                "(use letters, digits, '_', '-', '.', with ':' before the tag)"
            )

    head, _, last = name.rpartition("/")
    model, sep, tag = last.partition(":")
    if sep and not tag:
        raise InvalidModelName(f"invalid model name {name!r}: empty tag after ':'")
    segments = [*head.split("/"), model] if head else [model]
    if len(segments) > 3:
        raise InvalidModelName(f"invalid model name {name!r}: at most host/namespace/name:tag")
    if any(not s for s in segments):
        raise InvalidModelName(f"invalid model name {name!r}: empty part between '/'")

    _check_part(model, "name", _PART, name)
    if sep:
        _check_part(tag, "tag", _PART, name)

    if len(segments) == 1:
        return ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)

    namespace = segments[-2]
    _check_part(namespace, "namespace", _NAMESPACE, name)
    if len(segments) == 2:
        if sep or namespace == DEFAULT_NAMESPACE:
            return ModelName(DEFAULT_HOST, namespace, model, tag or DEFAULT_TAG)
        return ModelName(HF_REPO_HOST, namespace, model, DEFAULT_REVISION, ambiguous=True)

    host = segments[0].lower()
    if not _HOST.fullmatch(host) or len(host) > MAX_PART_LENGTH:
        raise InvalidModelName(f"invalid model name {name!r}: {segments[0]!r} is not a valid host")
    if host == "huggingface.co":
        return ModelName(HF_REPO_HOST, namespace, model, tag or DEFAULT_REVISION)
    return ModelName(host, namespace, model, tag or DEFAULT_TAG)


def _check_part(part: str, what: str, pattern: re.Pattern[str], name: str) -> None:
    if len(part) > MAX_PART_LENGTH:
        raise InvalidModelName(
            f"invalid model name {name!r}: {what} is too long ({len(part)} characters, at most {MAX_PART_LENGTH})"
        )
    if ".." in part:
        raise InvalidModelName(f"invalid model name {name!r}: '..' is not allowed in the {what}")
    if not pattern.fullmatch(part):
        rule = "letters, digits, '_', '-'" + ("" if what == "namespace" else ", '.'")
        raise InvalidModelName(
            f"invalid model name {name!r}: {what} {part!r} must start with a letter, digit or '_' and use {rule}"
        )
