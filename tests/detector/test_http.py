"""The one HTTP port: binds where configured, serves three read-only paths, nothing else."""

from __future__ import annotations

import http.client
import socket

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from detector.ops.http import Health, HttpServer


@pytest.fixture
def server() -> HttpServer:
    registry = CollectorRegistry()
    Counter("vigil_probe", "A sample series.", registry=registry).inc()
    s = HttpServer("127.0.0.1", 0, registry, Health()).start()
    yield s
    s.stop()


def _request(port: int, method: str, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path)
    r = c.getresponse()
    return r.status, r.read()


def test_binds_only_the_configured_address(server: HttpServer) -> None:
    assert server._server.server_address[0] == "127.0.0.1"
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for address in addresses - {"127.0.0.1"}:
        with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
            pass


def test_serves_metrics_and_probes(server: HttpServer) -> None:
    code, body = _request(server.port, "GET", "/metrics")
    assert code == 200 and b"vigil_probe_total 1.0" in body
    code, body = _request(server.port, "GET", "/healthz")
    assert code == 200 and orjson.loads(body)["alive"] is True
    code, body = _request(server.port, "GET", "/readyz")
    assert code == 503 and orjson.loads(body)["reason"] == "starting"  # no model, no broker


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin"),
        ("GET", "/reload"),
        ("POST", "/reload"),
        ("PUT", "/metrics"),
        ("DELETE", "/healthz"),
        ("POST", "/model"),
    ],
)
def test_no_admin_action_on_the_port(server: HttpServer, method: str, path: str) -> None:
    code, _ = _request(server.port, method, path)
    assert code in (404, 501)
