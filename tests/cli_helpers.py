"""Helpers for the CLI tests: an environment with its own LADLE_HOME and port, the `ladle` command run as a
subprocess, a `ladle serve` started by the test (known pid), and finding a server the CLI started itself."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ladle:
    """One test environment: a store (LADLE_HOME) and a server address (LADLE_HOST)."""

    home: Path
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ladle.cli.main", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def call(self, *args: str) -> subprocess.CompletedProcess:
        """`ladle ARGS` in this process (main() itself, no interpreter start-up), with this environment's
        variables; for commands whose subprocess behaviour another test already covers."""
        from ladle.cli.main import main

        out, err = io.StringIO(), io.StringIO()
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            stdin, sys.stdin = sys.stdin, io.StringIO("")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(list(args))
                except SystemExit as exc:  # argparse
                    code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdin = stdin
            os.environ.clear()
            os.environ.update(saved)
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ladle.cli.main", *args]


def make_env(home: Path, port: int, **extra: str) -> Ladle:
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "LADLE_HOME": str(home),
        "LADLE_HOST": f"127.0.0.1:{port}",
        # Two cores shared with other work: one torch thread per server, a small KV pool for tiny models.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LADLE_CPU_KV_CACHE_BYTES": str(32 << 20),
        "OLLAMA_MODELS": str(home / "no-ollama-store"),
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    env.pop("LADLE_API_KEY", None)
    env.update(extra)
    return Ladle(home=home, port=port, env=env)


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"ladle serve exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no healthy server at {url} after {timeout} s")


@contextlib.contextmanager
def serve(ladle: Ladle, *args: str) -> Iterator[subprocess.Popen]:
    """`ladle serve` on the environment's port, stopped (by its pid) afterwards."""
    log = open(ladle.home / f"serve-{ladle.port}.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ladle.command("serve", "--port", str(ladle.port), "--log-level", "warning", *args),
        env=ladle.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(ladle.url, process)
        yield process
    finally:
        stop_process(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        log.close()


def server_pids(home: Path) -> list[int]:
    """Pids of `ladle serve` processes whose LADLE_HOME is `home` (a server the CLI started by itself)."""
    marker = f"LADLE_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"serve" not in cmdline or b"ladle.cli.main" not in cmdline:
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def stop_process(pid: int, timeout: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A failed command: non-zero exit, stderr is exactly one `Error: ...` line, no traceback."""
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
