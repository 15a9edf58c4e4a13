"""Loopback HTTP servers for the egress tests: a listener that must never be reached, and a
"public-looking" upstream that answers every request with a redirect to it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Listener:
    url: str  # http://127.0.0.1:PORT
    port: int
    hits: list[str] = field(default_factory=list)  # "METHOD path" of every request it got


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@contextmanager
def inward_listener() -> Iterator[Listener]:
    """A loopback server standing for the metadata service or an internal admin API."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            hits.append(f"{self.command} {self.path}")
            body = b'{"secret": "internal-only"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)

        def log_message(self, *args: object) -> None:
            pass

    server, thread = _serve(Handler)
    port = server.server_address[1]
    try:
        yield Listener(url=f"http://127.0.0.1:{port}", port=port, hits=hits)
    finally:
        server.shutdown()
        thread.join(timeout=5)


@contextmanager
def redirector(to: str) -> Iterator[int]:
    """A server that answers 302 to ``to`` + the request's path; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(302)
            self.send_header("Location", to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server, thread = _serve(Handler)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join(timeout=5)
