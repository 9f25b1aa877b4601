"""The CLI's HTTP client: every command except `serve` and `bench` talks to a server through this.

    client = Client()                     # LADLE_HOST, default 127.0.0.1:11434; LADLE_API_KEY if set
    client.ensure_server()                # starts `ladle serve` in the background when nobody answers
    client.post("/api/copy", {...})       # JSON in, JSON out; {"error": ...} becomes ClientError
    for event in client.stream("POST", "/api/pull", {...}): ...   # NDJSON lines as dicts

Every failure is a ClientError whose message is one line, which `main` prints as `Error: ...`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
# How long a fresh background server may take to answer /health (imports torch: seconds on a laptop).
SERVER_START_TIMEOUT = 90.0


class ClientError(Exception):
    """A one-line error for the user; `status` is the HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def parse_host(value: str | None) -> tuple[str, int, str]:
    """LADLE_HOST the way OLLAMA_HOST is read: `host`, `host:port`, `:port`, with or without `http://`.
    Returns (host, port, scheme); a wildcard bind address (0.0.0.0, ::) is reached through loopback."""
    text = (value or "").strip()
    scheme = "http"
    if "://" in text:
        scheme, _, text = text.partition("://")
    text = text.split("/", 1)[0]
    host, port = text, DEFAULT_PORT
    if text.startswith("["):  # [::1]:port
        inner, _, rest = text[1:].partition("]")
        host = inner
        if rest.startswith(":") and rest[1:]:
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if port_text:
            port = _port(port_text, value)
    host = host or DEFAULT_HOST
    if host in ("0.0.0.0", "::"):
        host = DEFAULT_HOST
    return host, port, scheme


def _port(text: str, value: str | None) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ClientError(f"LADLE_HOST={value!r}: {text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ClientError(f"LADLE_HOST={value!r}: port {port} is out of range")
    return port


def ladle_home() -> Path:
    return Path(os.environ.get("LADLE_HOME") or Path.home() / ".ladle").expanduser()


def error_message(response: httpx.Response) -> str:
    """The server's error text: Ollama's {"error": "..."} or OpenAI's {"error": {"message": ...}}."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error:
            return error.splitlines()[0] if error.strip() else error
    text = response.text.strip().splitlines()
    return text[0] if text else f"the server answered HTTP {response.status_code}"


class Client:
    def __init__(self, host: str | None = None, timeout: float | None = None) -> None:
        value = host if host is not None else os.environ.get("LADLE_HOST")
        self.host, self.port, scheme = parse_host(value)
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"{scheme}://{netloc}:{self.port}"
        headers = {"User-Agent": "ladle-cli"}
        if os.environ.get("LADLE_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['LADLE_API_KEY']}"
        # No read timeout by default: loading or pulling a model can take minutes before the first byte.
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0)
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the server ----------------------------------------------------------------------------------

    def is_running(self) -> bool:
        try:
            response = self.http.get("/", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code < 500 or response.status_code == 503

    def ensure_server(self) -> None:
        """Start `ladle serve` in the background (detached, logging to LADLE_HOME/logs/server.log) unless a
        server already answers at LADLE_HOST, then wait until /health says it is ready."""
        if self.is_running():
            return
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ClientError(f"could not connect to a ladle server at {self.base_url}; is it running?")
        log_path = ladle_home() / "logs" / "server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "ladle.cli.main", "serve", "--host", self.host]
        command += ["--port", str(self.port)]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command and ignores its Ctrl-C
                close_fds=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if self.http.get("/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            code = process.poll()
            # Another `ladle` may have started a server on this port at the same moment: then use that one.
            if code is not None and not self.is_running():
                raise ClientError(
                    f"the ladle server exited with code {code} while starting; see {log_path}"
                    + _last_log_line(log_path)
                )
            time.sleep(0.2)
        raise ClientError(
            f"the ladle server did not start within {SERVER_START_TIMEOUT:.0f} s; see {log_path}"
        )

    # ---- requests ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise ClientError(error_message(response), response.status_code)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("DELETE", path, body)

    def stream(self, method: str, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """NDJSON events. An {"error": ...} line raises ClientError. Closing the iterator (or Ctrl-C while
        reading it) closes the connection, which makes the server abort the request."""
        try:
            with self.http.stream(method, path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(error_message(response), response.status_code)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise ClientError(f"the server sent a line that is not JSON: {line[:80]!r}") from None
                    if isinstance(event, dict) and event.get("error"):
                        raise ClientError(str(event["error"]).splitlines()[0])
                    yield event
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.HTTPError) -> ClientError:
        if isinstance(exc, httpx.ConnectError):
            return ClientError(f"could not connect to a ladle server at {self.base_url}; is it running?")
        if isinstance(exc, httpx.TimeoutException):
            return ClientError(f"the ladle server at {self.base_url} did not answer in time")
        if isinstance(exc, httpx.RemoteProtocolError):
            return ClientError(f"the ladle server at {self.base_url} closed the connection")
        return ClientError(f"request to {self.base_url} failed: {exc or type(exc).__name__}")


def _last_log_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()[:200]})" if lines else ""
