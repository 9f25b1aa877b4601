"""A real `ladle serve` subprocess on a free loopback port, for the server tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@dataclass
class Server:
    url: str
    model: str  # the served model id (the folder path as given)
    folder: Path
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_server(folder: Path, log_dir: Path, *extra: str, load: bool = True) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LADLE_API_KEY", None)
    env.pop("LADLE_HOST", None)
    # The store routes must never touch the user's real store (~/.ladle) from a test.
    env["LADLE_HOME"] = str(log_dir / "ladle-home")
    log_path = log_dir / f"server-{port}.log"
    args = [sys.executable, "-m", "ladle.cli.main", "serve", *([str(folder)] if load else [])]
    args += ["--port", str(port), "--log-level", "warning", *extra]
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", str(folder), folder, process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_ready(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"ladle serve exited early:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"ladle serve did not become healthy in {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def ladle_server(tiny_model_factory, tmp_path_factory) -> Iterator[Server]:
    """One server for the whole session, serving the tiny random llama folder."""
    folder, _ = tiny_model_factory("llama")
    with run_server(folder, tmp_path_factory.mktemp("server-logs")) as server:
        yield server
