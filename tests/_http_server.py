"""Local stand-ins for remote weight stores, for hub tests: an HTTP server and a Hugging Face cache layout.

The server listens on 127.0.0.1 (random port, one thread per request).

Usage::

    with LocalHTTPServer() as server:
        url = server.add("/w/model.pth", body=b"...", drop_after=100, drop_times=1)
        ...
        assert server.count("/w/model.pth") == 2

Routes are matched on the URL path only (query strings such as signatures are ignored). Each route can answer
with an error status, stall before answering, drop the connection part-way through the body (a given number of
times, or always), answer ``Range`` requests with ``206 Partial Content``, and send the body slowly. The server is
always shut down on exit.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Route:
    """How the server answers one path."""

    body: bytes = b""
    status: int = 200
    fail_times: int | None = None
    """With an error ``status``: how many requests get it before the body is served (``None``: all)."""
    drop_after: int | None = None
    """Close the connection after sending this many body bytes (headers announce the full length)."""
    drop_times: int | None = None
    """How many requests are dropped (``None``: all of them)."""
    support_range: bool = False
    stall: float = 0.0
    """Seconds to wait before answering, for the first ``stall_times`` requests."""
    stall_times: int = 1
    chunk_size: int = 64 * 1024
    chunk_delay: float = 0.0
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    served: int = 0
    """Requests seen so far (updated under the server lock)."""


@dataclass
class RequestRecord:
    """One request the server received."""

    path: str
    query: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Dropped connections are the point of some tests: do not print tracebacks for them."""


class LocalHTTPServer:
    """Context manager running the server in a background thread."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[RequestRecord] = []
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalHTTPServer:
        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ routes and bookkeeping
    @property
    def base_url(self) -> str:
        assert self._server is not None, "use the server as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, **route: object) -> str:
        """Register ``path`` (see :class:`Route` for options) and return its full URL."""
        self.routes[path] = Route(**route)  # type: ignore[arg-type]
        return self.base_url + path

    def count(self, path: str) -> int:
        """Number of requests received for ``path``."""
        with self.lock:
            return sum(1 for r in self.requests if r.path == path)

    def records(self, path: str) -> list[RequestRecord]:
        """The requests received for ``path``, oldest first."""
        with self.lock:
            return [r for r in self.requests if r.path == path]


def _make_handler(server: LocalHTTPServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
            pass

        def do_GET(self) -> None:  # noqa: N802 - name from the base class
            parts = urlsplit(self.path)
            with server.lock:
                server.requests.append(RequestRecord(parts.path, parts.query, dict(self.headers.items())))
                route = server.routes.get(parts.path)
                index = route.served if route else 0
                if route:
                    route.served += 1
            if route is None:
                self._send_status(404)
                return
            if route.stall and index < route.stall_times:
                time.sleep(route.stall)
            if route.status != 200 and (route.fail_times is None or index < route.fail_times):
                self._send_status(route.status)
                return
            self._send_body(route, index)

        def _send_status(self, status: int) -> None:
            body = f"error {status}".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_body(self, route: Route, index: int) -> None:
            start = self._range_start(route)
            body = route.body[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
            if route.support_range:
                self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in route.headers.items():
                self.send_header(key, value)
            self.end_headers()
            dropping = route.drop_after is not None and (route.drop_times is None or index < route.drop_times)
            limit = min(route.drop_after, len(body)) if dropping else len(body)
            for offset in range(0, limit, route.chunk_size):
                self.wfile.write(body[offset : min(offset + route.chunk_size, limit)])
                if route.chunk_delay:
                    self.wfile.flush()
                    time.sleep(route.chunk_delay)
            if dropping:
                self._drop()

        def _range_start(self, route: Route) -> int:
            value = self.headers.get("Range", "")
            if not route.support_range or not value.startswith("bytes=") or not value.endswith("-"):
                return 0
            start = int(value[len("bytes=") : -1])
            return start if 0 < start < len(route.body) else 0

        def _drop(self) -> None:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def make_hf_cache(root: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """Lay out ``models--org--name/{blobs,refs,snapshots}`` like huggingface_hub does; return the commit hash."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return commit
