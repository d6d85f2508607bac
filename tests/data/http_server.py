"""A real HTTP server on 127.0.0.1 serving images and every kind of web failure the downloader meets.

Routes are data (`Route`): status, body, content type, a delay before the headers, a redirect
target, a number of 503s before success (to prove that retries happen and are counted), a
missing or lying Content-Length, or a body dripped out slowly.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/png"
    delay: float = 0.0  # seconds before answering (slow server)
    location: str | None = None  # redirect target (path)
    fail_first: int = 0  # answer 503 this many times, then the real response
    content_length: int | None = None  # a lying Content-Length header; -1: none (body ends at close)
    drip: float = 0.0  # seconds between 1 kB pieces of the body (slow-drip server)


class ImageServer:
    """Context manager: `with ImageServer(routes) as srv: srv.url("/img/a.png")`."""

    def __init__(self, routes: dict[str, Route] | None = None, tls: tuple[str, str] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with server._lock:
                    n = server.hits.get(self.path, 0) + 1
                    server.hits[self.path] = n
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay:
                    time.sleep(route.delay)
                if n <= route.fail_first:
                    self.send_error(503)
                    return
                self.send_response(route.status)
                if route.location is not None:
                    self.send_header("Location", route.location)
                self.send_header("Content-Type", route.content_type)
                length = route.content_length if route.content_length is not None else len(route.body)
                if length >= 0:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if not route.drip:
                        self.wfile.write(route.body)
                    for i in range(0, len(route.body) if route.drip else 0, 1024):
                        self.wfile.write(route.body[i : i + 1024])
                        self.wfile.flush()
                        time.sleep(route.drip)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # (certificate PEM, key PEM): serve https
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused: an unreachable host)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
