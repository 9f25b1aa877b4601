"""A loopback Ollama-style registry for the store tests (a threaded http.server on 127.0.0.1).

Speaks the OCI distribution routes ladle pulls with:

    GET /v2/<ns>/<name>/manifests/<tag>      the manifest (404 with an OCI error body when unknown)
    GET /v2/<ns>/<name>/blobs/<digest>       the blob, with Range (206) support; with `redirect_blobs`
                                             a 307 to /cdn/<digest> first, as the real registry does

and keeps what a test needs to assert on: bytes of each blob sent, requests seen. Faults to inject:
`cut_after[digest] = [n, ...]` ends the next GETs of a blob after n body bytes (then closes the
connection), `corrupt.add(digest)` serves that blob with one byte flipped, `fail_next[digest] = [503, ...]`
answers the next requests with those statuses, `ignore_range` answers 200 with the whole blob.

`BlobServer` (the HTTP plumbing, Range parsing and faults) is shared with hf_server.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared_models import stories_gguf

MODEL = "application/vnd.ollama.image.model"
TEMPLATE = "application/vnd.ollama.image.template"
PARAMS = "application/vnd.ollama.image.params"
SYSTEM = "application/vnd.ollama.image.system"
LICENSE = "application/vnd.ollama.image.license"
CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

STORIES = stories_gguf()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobServer:
    """A threaded loopback HTTP server that serves byte strings with Range support and fault injection."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_sent: Counter[str] = Counter()
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_after: dict[str, list[int]] = {}
        self.corrupt: set[str] = set()
        self.fail_next: dict[str, list[int]] = {}
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server._record(self)
                server.handle(self, head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                server._record(self)
                server.handle(self, head=True)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> BlobServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _record(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append((handler.command, handler.path, handler.headers.get("Range")))

    def handle(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        raise NotImplementedError

    # ---- helpers for subclasses ------------------------------------------------------------------------

    def send_json(
        self, handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", (headers or {}).pop("Content-Type", "application/json"))
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def take_failure(self, key: str) -> int | None:
        with self.lock:
            queue = self.fail_next.get(key)
            return queue.pop(0) if queue else None

    def send_blob(
        self,
        handler: BaseHTTPRequestHandler,
        key: str,
        data: bytes,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Serve `data` (counted under `key`), honouring Range and the faults set for `key`."""
        failure = self.take_failure(key)
        if failure is not None:
            self.send_json(handler, failure, {"errors": [{"code": "UNAVAILABLE"}]})
            return
        if key in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, end = 0, len(data) - 1
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range") or "")
        if match and not self.ignore_range:
            start = int(match.group(1))
            end = min(int(match.group(2)), len(data) - 1) if match.group(2) else len(data) - 1
            status = 206
        body = data[start : end + 1]
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        if head:
            return
        with self.lock:
            cuts = self.cut_after.get(key)
            cut = cuts.pop(0) if cuts else None
        if cut is not None and cut < len(body):
            body = body[:cut]
            handler.close_connection = True
        try:
            for offset in range(0, len(body), 64 << 10):
                chunk = body[offset : offset + (64 << 10)]
                handler.wfile.write(chunk)
                with self.lock:
                    self.bytes_sent[key] += len(chunk)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True


class RegistryServer(BlobServer):
    """The registry: add models with add_model(), then point LADLE_REGISTRY at `url`."""

    def __init__(self, redirect_blobs: bool = False) -> None:
        super().__init__()
        self.redirect_blobs = redirect_blobs
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str, str], bytes] = {}

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_model(
        self,
        name: str,
        tag: str = "latest",
        layers: list[tuple[str, bytes]] | None = None,
        namespace: str = "library",
    ) -> bytes:
        """Publish a model (default: stories260K.gguf plus template and params layers); returns the manifest."""
        if layers is None:
            layers = [
                (MODEL, STORIES.read_bytes()),
                (TEMPLATE, b"{{ .System }}\n{{ .Prompt }}"),
                (PARAMS, json.dumps({"temperature": 0.5, "stop": ["</s>"]}).encode()),
            ]
        entries = [{"mediaType": t, "digest": self.add_blob(d), "size": len(d)} for t, d in layers]
        config = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "llama",
                "model_families": ["llama"],
                "model_type": "260K",
                "file_type": "F32",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [e["digest"] for e in entries]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, "digest": self.add_blob(config), "size": len(config)},
                "layers": entries,
            }
        ).encode()
        self.manifests[(namespace, name, tag)] = manifest
        return manifest

    def handle(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        path = handler.path.split("?")[0]
        if m := re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", path):
            manifest = self.manifests.get((m.group(1), m.group(2), m.group(3)))
            failure = self.take_failure("manifest")
            if failure is not None:
                self.send_json(handler, failure, {"errors": [{"code": "UNAVAILABLE"}]})
            elif manifest is None:
                self.send_json(
                    handler, 404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "not found"}]}
                )
            else:
                self.send_json(handler, 200, manifest, {"Content-Type": MANIFEST})
            return
        if m := re.fullmatch(r"/v2/([^/]+)/([^/]+)/blobs/(sha256:[0-9a-f]{64})", path):
            digest = m.group(3)
            if self.redirect_blobs and digest in self.blobs:
                handler.send_response(307)
                handler.send_header("Location", f"/cdn/{digest}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            self._send_digest(handler, digest, head)
            return
        if m := re.fullmatch(r"/cdn/(sha256:[0-9a-f]{64})", path):
            self._send_digest(handler, m.group(1), head)
            return
        self.send_json(handler, 404, {"errors": [{"code": "NOT_FOUND"}]})

    def _send_digest(self, handler: BaseHTTPRequestHandler, digest: str, head: bool) -> None:
        data = self.blobs.get(digest)
        if data is None:
            self.send_json(handler, 404, {"errors": [{"code": "BLOB_UNKNOWN"}]})
        else:
            self.send_blob(handler, digest, data, head)
