"""An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that injects faults on request.

Faults are scheduled per request, so a test says exactly what the endpoint does: `fail("503",
times=2)` answers the next two requests with 503 SlowDown and passes the rest through;
`fail("reset")` with no `times` resets every connection until `heal()`. A `match` predicate on
(method, path) limits a fault to some requests, e.g. GETs of one object.

Modes: "503" (SlowDown), "500" (InternalError), "reset" (read the request, then drop the
connection with a TCP reset, no answer), "lost" (forward, so the request takes effect, then reset:
the answer is lost), "truncate" (forward, then send the headers and half the body and close).
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

MODES = ("503", "500", "reset", "lost", "truncate")
ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}
TIMEOUT = 10  # seconds; no socket of the proxy waits longer


class FaultProxy:
    """Proxy to `upstream` ("host:port"); `url` is its own http:// address."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.requests: list[tuple[str, str, str]] = []  # (method, path, what was done)
        self._faults: list[list] = []  # [mode, times left or None, match]
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def fail(
        self,
        mode: str,
        times: int | None = None,
        match: Callable[[str, str], bool] | None = None,
    ) -> None:
        """Answer the next `times` matching requests (all of them when None) with `mode`."""
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        with self._lock:
            self._faults.append([mode, times, match])

    def heal(self) -> None:
        """Pass every request through again."""
        with self._lock:
            self._faults.clear()

    def faulted(self) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[2] != "pass"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(TIMEOUT)

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            for fault in self._faults:
                mode, times, match = fault
                if match is not None and not match(method, path):
                    continue
                if times is not None:
                    fault[1] -= 1
                    if fault[1] == 0:
                        self._faults.remove(fault)
                break
            else:
                mode = "pass"
            self.requests.append((method, path, mode))
            return mode


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT
    owner: FaultProxy
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        """The request body as sent: Content-Length bytes, or the raw chunked encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = b""
            while True:
                line = self.rfile.readline(65537)
                raw += line
                size = int(line.split(b";")[0], 16)
                if size == 0:  # trailers, then a blank line
                    while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                        raw += line
                    return raw + line
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _forward(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=TIMEOUT)
        dropped = ("connection", "expect")  # hop-by-hop; the proxy read the body already
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        self.upstream.request(self.command, self.path, body=body, headers=headers)
        response = self.upstream.getresponse()
        return response, response.read()

    def _send(self, status: int, reason: str, headers, body: bytes, cut: bool = False) -> None:
        self.send_response_only(status, reason)
        for key, value in headers:
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        elif (length := dict(headers).get("Content-Length")) is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body[: len(body) // 2] if cut else body)
        self.wfile.flush()
        if cut:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _handle(self) -> None:
        body = self._body()
        mode = self.owner._decide(self.command, self.path)
        if mode == "reset":
            return self._reset()
        if mode in ERRORS:
            status, code, message = ERRORS[mode]
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>fault</RequestId></Error>"
            ).encode()
            return self._send(status, code, [("Content-Type", "application/xml")], xml)
        response, data = self._forward(body)
        if mode == "lost":
            return self._reset()
        cut = mode == "truncate" and self.command == "GET" and len(data) > 1
        self._send(response.status, response.reason, response.getheaders(), data, cut)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle
