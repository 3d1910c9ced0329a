"""A local HTTP file server with Range support, and a switch to cut a response short;
and `reply_json` for the tests' own small API servers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FileServer(ThreadingHTTPServer):
    def __init__(self, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = directory
        self.cut_after: dict[str, int] = {}  # name -> bytes sent before the next response breaks off
        self.redirects: dict[str, str] = {}  # name -> the URL a request for it is sent to (302)
        self.ranges: list[str | None] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        if name in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[name])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.server.directory / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested else 0
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = self.server.cut_after.pop(name, None)
        self.wfile.write(body if limit is None else body[:limit])

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@contextmanager
def serve_files(directory: Path) -> Iterator[FileServer]:
    server = FileServer(directory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def reply_json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    """Answer the request `handler` is serving with `body` as JSON."""
    reply = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(reply)))
    handler.end_headers()
    handler.wfile.write(reply)


class GatedProxy(ThreadingHTTPServer):
    """A loopback HTTP/1.1 proxy to one server that holds every inference request after the
    first `pass_infers` until `gate` is set: a client behind it is stopped at a known point
    of its work, however fast the server answers."""

    def __init__(self, target: str, pass_infers: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.target, self.pass_infers = target, pass_infers
        self.infers = 0
        self.gate = threading.Event()
        self.holding = threading.Event()  # set once a request waits at the gate
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    def admit(self, path: str) -> None:
        if not path.endswith("/infer"):
            return
        with self._lock:
            self.infers += 1
            held = self.infers > self.pass_infers
        if held:
            self.holding.set()
            self.gate.wait()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: GatedProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient speaks it

    def _forward(self) -> None:
        import http.client

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.admit(self.path)
        upstream = http.client.HTTPConnection(self.server.target, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def gated_proxy(target: str, pass_infers: int) -> Iterator[GatedProxy]:
    proxy = GatedProxy(target, pass_infers)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.gate.set()  # release what it holds, then stop
        proxy.shutdown()
        proxy.server_close()
        thread.join()
