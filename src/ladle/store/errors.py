"""Errors the store raises. Every message is one line that names the problem, so the CLI can print it
as is and the HTTP layer can put it in {"error": "..."}."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's errors."""


class InvalidModelName(StoreError, ValueError):
    """A model reference that is not a valid name (empty, too long, a path, illegal characters)."""


class ModelNotFound(StoreError, LookupError):
    """No local model answers to a name."""


class ReadOnlyModel(StoreError):
    """The model lives in Ollama's store, which ladle only reads."""


class ModelfileError(StoreError, ValueError):
    """A Modelfile that cannot be parsed or built; `line` is 1-based where known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class PullError(StoreError):
    """A pull that failed: registry unreachable, model unknown there, corrupt or truncated download."""
