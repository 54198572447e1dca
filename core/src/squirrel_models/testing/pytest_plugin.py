"""pytest fixtures for squirrel-models users and plugin authors (entry point ``pytest11``).

- ``squirrel_plugins``: a fresh :class:`PluginManager` with the scripted test provider.
- ``squirrel_metrics``: an in-memory OpenTelemetry reader; ``squirrel_metrics.points(name)``
  lists the data points of one instrument.
- ``squirrel_manager``: a factory ``(config=None, **kw) -> ModelManager`` wired to both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


class MetricsReader:
    """An in-memory metrics reader and a span exporter, with helpers to read them."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        out: list[Any] = []
        for rm in (data.resource_metrics if data else []):
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        out.extend(m.data.data_points)
        return out

    def total(self, name: str, **attributes: Any) -> float:
        """Sum of a counter's (or histogram's) values over points matching ``attributes``."""
        total = 0.0
        for p in self.points(name):
            if all(p.attributes.get(k) == v for k, v in attributes.items()):
                total += float(getattr(p, "value", None) or getattr(p, "sum", 0) or 0)
        return total

    def everything(self) -> str:
        """Every metric attribute and span attribute as text (to search for leaks)."""
        parts: list[str] = []
        data = self.reader.get_metrics_data()
        for rm in (data.resource_metrics if data else []):
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        parts.append(f"{m.name} {dict(p.attributes or {})}")
        for s in self.spans.get_finished_spans():
            parts.append(f"{s.name} {dict(s.attributes or {})} {s.status}")
            parts.extend(f"{e.name} {dict(e.attributes or {})}" for e in s.events)
        return "\n".join(parts)


@pytest.fixture
def squirrel_plugins() -> Any:
    from squirrel_models.plugins import PluginManager
    from squirrel_models.testing import ScriptedPlugin

    pm = PluginManager()
    pm.register(ScriptedPlugin(), "scripted")
    return pm


@pytest.fixture
def squirrel_metrics() -> Iterator[MetricsReader]:
    reader = MetricsReader()
    yield reader
    reader.meter_provider.shutdown()


@pytest.fixture
def squirrel_manager(squirrel_plugins: Any, squirrel_metrics: MetricsReader
                     ) -> Callable[..., Any]:
    from squirrel_models.manager import ModelManager

    def make(config: Any = None, **kw: Any) -> ModelManager:
        kw.setdefault("plugins", squirrel_plugins)
        kw.setdefault("meter_provider", squirrel_metrics.meter_provider)
        kw.setdefault("tracer_provider", squirrel_metrics.tracer_provider)
        return ModelManager(config, **kw)

    return make
