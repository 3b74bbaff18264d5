"""A Hugging Face Hub stand-in on 127.0.0.1 that speaks the download protocol.

``huggingface_hub`` talks to it through ``HF_ENDPOINT``: HEAD/GET
``/{repo}/resolve/{revision}/{file}`` with ``ETag`` and ``X-Repo-Commit``, 404 with
``X-Error-Code`` for misses, plus the two API routes ``snapshot_download`` uses.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo -> {"sha": commit, "files": {name: bytes}}
        self.tamper: dict[tuple[str, str], bytes] = {}  # (repo, file) -> bytes served instead
        self.downloads: Counter = Counter()  # (repo, file) -> GETs of the content
        self._server = None

    def publish(self, repo: str, files: dict[str, bytes]) -> str:
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        sha = digest.hexdigest()
        self.repos[repo] = {"sha": sha, "files": dict(files)}
        return sha

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code, body=b"", headers=None, head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _route(self, head: bool):
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo = "/".join(parts[2:4])
                    info = hub.repos.get(repo)
                    if info is None:
                        return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head)
                    if parts[4] == "revision":
                        return self._json({"id": repo, "sha": info["sha"],
                                           "siblings": [{"rfilename": n} for n in sorted(info["files"])]})
                    if parts[4] == "tree":
                        return self._json([{"type": "file", "path": n, "size": len(b),
                                            "oid": hashlib.sha1(b).hexdigest()} for n, b in sorted(info["files"].items())])
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    info = hub.repos.get(repo)
                    if info is None:
                        return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                    if rev not in ("main", info["sha"]):
                        return self._send(404, b"", {"X-Error-Code": "RevisionNotFound"}, head)
                    if name not in info["files"]:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound",
                                                     "X-Repo-Commit": info["sha"]}, head)
                    body = hub.tamper.get((repo, name), info["files"][name])
                    etag = hashlib.sha256(info["files"][name]).hexdigest()  # what the Hub says it is
                    headers = {"ETag": f'"{etag}"', "X-Repo-Commit": info["sha"],
                               "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
                    rng = self.headers.get("Range")
                    if not head:
                        hub.downloads[(repo, name)] += 1
                    if rng and rng.startswith("bytes=") and not head:
                        start = int(rng[6:].split("-")[0] or 0)
                        headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                        return self._send(206, body[start:], headers)
                    return self._send(200, body, headers, head)
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
