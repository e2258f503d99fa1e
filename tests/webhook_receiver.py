"""A real HTTP server on loopback that records webhook POSTs and answers as scripted: status codes, a redirect,
a huge body, or an answer trickled a byte at a time (what a hostile receiver does to hold its sender)."""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """`statuses` are answered in turn (then 200); `received` lists every request, failed ones too.

    `redirect_to`: answer 302 to that URL. `body_bytes`: answer with a body that long (`sent_bytes` counts what
    the client took before hanging up). `trickle_s`: send the answer one byte every `trickle_s` seconds, for
    `trickle_bytes` bytes. `host`/`port`: where to listen (any 127.x.y.z is loopback on Linux).
    """

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    redirect_to: str | None = None
    body_bytes: int = 0
    trickle_s: float | None = None
    trickle_bytes: int = 30
    host: str = "127.0.0.1"
    port: int = 0
    sent_bytes: int = 0
    hung_up: list[float] = field(default_factory=list)  # seconds after each request until the client hung up

    def __post_init__(self) -> None:
        receiver = self
        self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                started = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):
                    receiver.hung_up.append(time.monotonic() - started)
                self.close_connection = True

            def _answer(self) -> None:
                if receiver.trickle_s is not None:
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * receiver.trickle_bytes
                    for i in range(receiver.trickle_bytes):
                        if receiver.stopping.wait(receiver.trickle_s):
                            return
                        self.wfile.write(answer[i : i + 1])
                        self.wfile.flush()
                    return
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.redirect_to:
                    status = 302
                self.send_response(status)
                if receiver.redirect_to:
                    self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Length", str(receiver.body_bytes))
                self.end_headers()
                chunk = b"x" * 65536
                while receiver.sent_bytes < receiver.body_bytes and not receiver.stopping.is_set():
                    self.wfile.write(chunk[: receiver.body_bytes - receiver.sent_bytes])
                    receiver.sent_bytes += min(len(chunk), receiver.body_bytes - receiver.sent_bytes)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}/hook"

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
