"""One port: /metrics (Prometheus), /healthz (the loop is alive), /readyz (serving)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Health", "HttpServer"]


@dataclass
class Health:
    """What the loop reports about itself; read by the probes."""

    liveness_timeout_s: float = 60.0
    last_beat: float = field(default_factory=time.monotonic)
    model_loaded: bool = False
    broker_reachable: bool = False
    partitions_assigned: int = 0
    reason: str = "starting"
    on_beat: Callable[[], None] | None = None  # e.g. the systemd watchdog ping

    def beat(self) -> None:
        self.last_beat = time.monotonic()
        if self.on_beat is not None:
            self.on_beat()

    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < self.liveness_timeout_s

    def ready(self) -> bool:
        return (
            self.alive()
            and self.model_loaded
            and self.broker_reachable
            and self.partitions_assigned > 0
        )

    def report(self) -> dict[str, object]:
        return {
            "alive": self.alive(),
            "ready": self.ready(),
            "model_loaded": self.model_loaded,
            "broker_reachable": self.broker_reachable,
            "partitions_assigned": self.partitions_assigned,
            "seconds_since_loop": round(time.monotonic() - self.last_beat, 3),
            "reason": self.reason,
        }


class HttpServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health):
        registry_, health_ = registry, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry_), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok = health_.alive() if path == "/healthz" else health_.ready()
                    self._send(
                        200 if ok else 503, orjson.dumps(health_.report()), "application/json"
                    )
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="vigil-http", daemon=True
        )

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
