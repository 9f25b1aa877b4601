"""A loopback Hugging Face Hub for the store tests; point HF_ENDPOINT at `url`.

Answers the routes huggingface_hub 2.x calls for what ladle does (read from its source):

    GET  /api/models/<org>/<repo>[/revision/<rev>]   HfApi.model_info(files_metadata=True): id, sha, siblings
                                                     with size, blobId and, for LFS files, lfs.sha256/size
    HEAD /<org>/<repo>/resolve/<rev>/<file>          hf_hub_download's metadata call: X-Repo-Commit, ETag,
                                                     Content-Length
    GET  /<org>/<repo>/resolve/<rev>/<file>          the bytes, with Range

Unknown repositories answer 404 with X-Error-Code RepoNotFound and unknown files EntryNotFound, which
huggingface_hub turns into its RepositoryNotFoundError / EntryNotFoundError. Files at or above
`lfs_threshold` bytes are LFS files (their ETag is the sha256, as on the Hub); smaller ones are plain git
blobs (ETag = git blob sha1). Byte counts and faults come from BlobServer, keyed by "<repo>/<file>".
"""

from __future__ import annotations

import hashlib
import re
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

from registry_server import BlobServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HfServer(BlobServer):
    def __init__(self, lfs_threshold: int = 1024) -> None:
        super().__init__()
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, dict[str, bytes]] = {}

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repos[repo_id] = dict(files)

    def is_lfs(self, data: bytes) -> bool:
        return len(data) >= self.lfs_threshold

    def handle(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(handler.path.split("?")[0])
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            self._model_info(handler, m.group(1), m.group(2))
            return
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            self._resolve(handler, m.group(1), m.group(2), m.group(3), head)
            return
        self.send_json(handler, 404, {"error": "not found"})

    def _model_info(self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str | None) -> None:
        files = self.repos.get(repo_id)
        if files is None:
            self.send_json(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return
        if revision not in (None, "main", COMMIT):
            self.send_json(handler, 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            return
        siblings = []
        for name, data in files.items():
            sibling = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if self.is_lfs(data):
                sibling["lfs"] = {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
                sibling["blobId"] = git_blob_id(b"lfs pointer of " + name.encode())
            siblings.append(sibling)
        self.send_json(
            handler,
            200,
            {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False, "siblings": siblings},
        )

    def _resolve(
        self, handler: BaseHTTPRequestHandler, repo_id: str, rev: str, name: str, head: bool
    ) -> None:
        files = self.repos.get(repo_id)
        if files is None:
            self.send_json(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return
        data = files.get(name)
        if data is None or rev not in ("main", COMMIT):
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
            self.send_json(handler, 404, {"error": "Entry not found"}, headers)
            return
        etag = hashlib.sha256(data).hexdigest() if self.is_lfs(data) else git_blob_id(data)
        self.send_blob(
            handler, f"{repo_id}/{name}", data, head, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}
        )
