"""``[telemetry]``: export the manager's metrics through the OpenTelemetry SDK, by configuration.

Two exporters, either or both, from optional dependencies
(``pip install 'squirrel-models[telemetry]'``):

- Prometheus: ``prometheus_port`` serves ``/metrics`` (on ``prometheus_host``) for a
  Prometheus server to scrape (``opentelemetry-exporter-prometheus``);
- OTLP over HTTP: ``otlp_endpoint`` (a collector's ``/v1/metrics`` URL) receives the metrics
  every ``export_interval_s`` and once more when the manager closes
  (``opentelemetry-exporter-otlp-proto-http``).

With neither set (the default) nothing is exported by configuration, and the manager uses the
global meter provider (whatever the application configured; the API's no-op otherwise). A
``meter_provider`` passed to :class:`~squirrel_models.ModelManager` wins over ``[telemetry]``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["Telemetry", "TelemetryConfig"]

INSTALL = "pip install 'squirrel-models[telemetry]'"


def _port(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 < value < 65536):
        raise ConfigError(f"must be a TCP port (1..65535), got {value!r}", field=attribute.name)


def _interval(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.1 <= value <= 86400):
        raise ConfigError(f"must be a number of seconds in 0.1..86400, got {value!r}",
                          field=attribute.name)


def _endpoint(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # The same rules as a provider's base_url: a query (?api-key=...) or credentials would
    # reach the exporter's log lines, and a bad port would fail every export, not start-up.
    from .upstream import http_url

    if value is not None:
        http_url(example="http://127.0.0.1:4318/v1/metrics", secret="credentials",
                 option="OTEL_EXPORTER_OTLP_HEADERS")(instance, attribute, value)


@attrs.frozen
class TelemetryConfig:
    """``[telemetry]``: metrics exporters. See the module docstring."""

    prometheus_port: int | None = attrs.field(default=None, validator=_port)
    prometheus_host: str = "127.0.0.1"
    otlp_endpoint: str | None = attrs.field(default=None, validator=_endpoint)
    export_interval_s: float = attrs.field(default=60.0, validator=_interval)
    service_name: str = "squirrel-models"

    def __attrs_post_init__(self) -> None:
        # set without the exporter it tunes, it did nothing, without a word
        for name, default, needs in (("prometheus_host", "127.0.0.1", "prometheus_port"),
                                     ("export_interval_s", 60.0, "otlp_endpoint")):
            if getattr(self, name) != default and getattr(self, needs) is None:
                raise ConfigError(f"has no effect unless {needs} is set (it tunes that exporter)",
                                  field=name)

    @property
    def enabled(self) -> bool:
        return self.prometheus_port is not None or self.otlp_endpoint is not None


def _need(module: str, field: str, dist: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"needs {dist}, which is not installed: {INSTALL}",
                          field=f"telemetry.{field}") from None


class Telemetry:
    """The SDK meter provider ``[telemetry]`` asks for, its readers and the Prometheus
    server. Built with the manager (a missing exporter is a ``ConfigError`` then); the server
    starts with :meth:`start`; :meth:`shutdown` flushes and stops everything."""

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self._server: Any = None
        self._prometheus: Any = None
        self._registry: Any = None
        self._client: Any = None
        sdk_metrics = _need("opentelemetry.sdk.metrics",
                            "prometheus_port" if config.prometheus_port else "otlp_endpoint",
                            "opentelemetry-sdk")
        resources = _need("opentelemetry.sdk.resources", "otlp_endpoint", "opentelemetry-sdk")
        readers = []
        if config.prometheus_port is not None:
            client = _need("prometheus_client", "prometheus_port", "prometheus-client")
            prom = _need("opentelemetry.exporter.prometheus", "prometheus_port",
                         "opentelemetry-exporter-prometheus")
            # A registry of its own: only this manager's metrics, and two managers in one
            # process do not collide in the global one.
            self._client, self._registry = client, client.CollectorRegistry()
            self._prometheus = prom.PrometheusMetricReader(registry=self._registry)
            readers.append(self._prometheus)
        if config.otlp_endpoint is not None:
            otlp = _need("opentelemetry.exporter.otlp.proto.http.metric_exporter",
                         "otlp_endpoint", "opentelemetry-exporter-otlp-proto-http")
            export = _need("opentelemetry.sdk.metrics.export", "otlp_endpoint",
                           "opentelemetry-sdk")
            readers.append(export.PeriodicExportingMetricReader(
                otlp.OTLPMetricExporter(endpoint=config.otlp_endpoint),
                export_interval_millis=config.export_interval_s * 1000))
        resource = resources.Resource.create({"service.name": config.service_name})
        self.meter_provider: MeterProvider = sdk_metrics.MeterProvider(
            metric_readers=readers, resource=resource)

    def start(self) -> None:
        """Serve ``/metrics`` for Prometheus (if configured). Idempotent."""
        if self._prometheus is None or self._server is not None:
            return
        try:
            self._server, _ = self._client.start_http_server(self.config.prometheus_port,
                                                addr=self.config.prometheus_host,
                                                registry=self._registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve /metrics on {self.config.prometheus_host}:"
                              f"{self.config.prometheus_port}: {exc.strerror or exc}",
                              field="telemetry.prometheus_port") from None

    def shutdown(self) -> None:
        """Export what is left (OTLP), stop the server and the readers. Blocking: call it in
        a worker thread from async code."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutdown = getattr(self.meter_provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
