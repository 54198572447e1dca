"""``[telemetry]``: metrics exported by configuration, to a real Prometheus scrape over HTTP
and to a real OTLP/HTTP receiver on 127.0.0.1 (a tiny collector in a thread)."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from squirrel_models import AIRequest, ConfigError, ModelManager

from ..support.ports import free_port, held_port

pytestmark = pytest.mark.anyio

PROVIDERS = [{"name": "local", "type": "scripted",
              "options": {"models": ["cheap"], "reply": "nuts"},
              "models": [{"name": "cheap", "price": {"input": "0.1", "output": "0.2"}}]}]


class Collector:
    """An OTLP/HTTP metrics receiver: keeps every POSTed body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str, bytes]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append((self.path, self.headers.get("content-type", ""), body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def metric_names(self) -> set[str]:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        names = set()
        for _, _, body in self.bodies:
            req = ExportMetricsServiceRequest()
            req.ParseFromString(body)
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    names.update(m.name for m in sm.metrics)
        return names

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def manager(squirrel_plugins: Any, telemetry: dict[str, Any]) -> ModelManager:
    return ModelManager({"providers": PROVIDERS, "telemetry": telemetry},
                        plugins=squirrel_plugins)


@contextlib.asynccontextmanager
async def serving_metrics(squirrel_plugins: Any) -> AsyncIterator[tuple[ModelManager, int]]:
    """A started manager serving ``/metrics`` on a port held for the block (the product
    refuses port 0: it must be told a number). Before, the test gave it a ``free_port()``,
    which another process could take before the manager bound it (a ConfigError, the test
    red) or after it closed (the check that closing stops the server then reached that
    process). A port the server still finds taken (see ``held_port``) is traded for another."""
    for tries_left in reversed(range(3)):
        with held_port() as port:
            mm = manager(squirrel_plugins, {"prometheus_port": port})
            try:
                await mm.start()  # a start that fails closes the manager
            except ConfigError as exc:
                if tries_left and "in use" in str(exc):
                    continue
                raise
            yield mm, port
            return


async def test_prometheus_endpoint_serves_the_metrics(squirrel_plugins) -> None:
    async with serving_metrics(squirrel_plugins) as (mm, port):
        async with mm:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=8))
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert "gen_ai_client_operation_duration" in r.text
        assert 'gen_ai_request_model="local/cheap"' in r.text
        assert "squirrel_fallback_attempts" in r.text
        # closing the manager stops the server (the port still held: nobody else listens)
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect(("127.0.0.1", port))


async def test_otlp_exports_on_close(squirrel_plugins, collector: Collector) -> None:
    async with manager(squirrel_plugins, {"otlp_endpoint": collector.url,
                                          "export_interval_s": 3600}) as mm:
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=8))
    assert collector.bodies, "nothing was exported when the manager closed"
    path, ctype, _ = collector.bodies[-1]
    assert path == "/v1/metrics" and ctype == "application/x-protobuf"
    assert {"gen_ai.client.operation.duration", "squirrel.fallback.attempts"} <= \
        collector.metric_names()


async def test_a_meter_provider_passed_in_wins(squirrel_plugins, squirrel_metrics) -> None:
    mm = ModelManager({"providers": PROVIDERS, "telemetry": {"prometheus_port": free_port()}},
                      plugins=squirrel_plugins, meter_provider=squirrel_metrics.meter_provider)
    assert mm.telemetry is None
    await mm.aclose()


@pytest.mark.parametrize(("telemetry", "field", "says"), [
    ({"prometheus_port": 0}, "telemetry.prometheus_port", "must be a TCP port"),
    ({"prometheus_port": 70000}, "telemetry.prometheus_port", "must be a TCP port"),
    ({"otlp_endpoint": "ftp://x/v1/metrics"}, "telemetry.otlp_endpoint", "http(s) URL"),
    ({"otlp_endpoint": "http://u:pw@h/v1/metrics"}, "telemetry.otlp_endpoint", "credentials"),
    # before: accepted; the query's key reached the exporter's log lines, a bad port failed
    # every export instead of start-up
    ({"otlp_endpoint": "https://h/v1/metrics?api-key=pwpwpwpw"}, "telemetry.otlp_endpoint", "a query"),
    ({"otlp_endpoint": "http://h:99999/v1/metrics"}, "telemetry.otlp_endpoint", "1..65535"),
    ({"otlp_endpoint": "http://[::1/v1/metrics"}, "telemetry.otlp_endpoint", "http(s) URL"),
    ({"export_interval_s": 0}, "telemetry.export_interval_s", "0.1..86400"),
    ({"prometheus": 9464}, "telemetry.prometheus", "unknown key"),
])
def test_bad_telemetry_config_names_the_field(squirrel_plugins, telemetry, field, says) -> None:
    with pytest.raises(ConfigError) as info:
        manager(squirrel_plugins, telemetry)
    assert info.value.field == field and says in str(info.value)
    assert "pw" not in str(info.value)


def test_a_missing_exporter_says_what_to_install(squirrel_plugins, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)
    with pytest.raises(ConfigError) as info:
        manager(squirrel_plugins, {"prometheus_port": free_port()})
    assert info.value.field == "telemetry.prometheus_port"
    assert "pip install 'squirrel-models[telemetry]'" in str(info.value)


async def test_a_port_in_use_is_a_config_error(squirrel_plugins) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mm = manager(squirrel_plugins, {"prometheus_port": port})
        with pytest.raises(ConfigError) as info:
            await mm.start()
    assert info.value.field == "telemetry.prometheus_port"
    assert f"127.0.0.1:{port}" in str(info.value)
