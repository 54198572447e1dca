"""Metrics and traces through the OpenTelemetry API.

Instrument names follow the GenAI semantic conventions where they exist; the rest live under
``squirrel.``. Labels are bounded: provider, model, outcome, error type and scope *kind* for
caller keys; never user ids, keys or prompts. With no SDK configured the API is a no-op.
Every label value and span attribute passes through :func:`squirrel_models.secrets.redact`
(instruments and the tracer are wrapped once, here), so a model id or error text that echoes
a key cannot carry it into a metrics backend.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import secrets

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .errors import RateLimitExceeded, RateLimitTooSmall
    from .types import TokenCount, Usage

__all__ = ["COST_BUCKETS", "DURATION_BUCKETS", "TOKEN_BUCKETS", "UTILIZATION_BUCKETS", "Metrics"]

SCOPE = "squirrel_models"
#: gen_ai.client.token.usage's buckets as the GenAI conventions give them; the SDK's default
#: ones end at 10,000 tokens, where a long-context prompt is only "more".
TOKEN_BUCKETS = tuple(4 ** i for i in range(14))
DURATION_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60)
# Every histogram names its buckets: the SDK's default ones (0, 5, 10 ... 10,000) put every
# request's cost in USD, and every utilization, in the one bucket (0, 5].
#: squirrel.request.cost, USD: a token of a cheap model to a long answer of a dear one.
COST_BUCKETS = (1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
#: squirrel.budget.utilization: near the limit is where it matters; above 1, an overspend.
UTILIZATION_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1, 1.1, 1.5)


def _clean(attributes: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``attributes`` with every string value redacted (the same mapping when nothing is)."""
    if not attributes:  # key-shaped values are masked too, with no secret registered
        return attributes
    out: dict[str, Any] | None = None
    for k, v in attributes.items():
        if isinstance(v, str):
            c = secrets.redact_recurring(v)
            if c != v:
                out = dict(attributes) if out is None else out
                out[k] = c
    return attributes if out is None else out


class _Instrument:
    """An OpenTelemetry counter or histogram whose label values are redacted; nothing is
    done while no SDK records (``live``: see :class:`_Live`)."""

    __slots__ = ("_i", "_live")

    def __init__(self, instrument: Any, live: _Live) -> None:
        self._i = instrument
        self._live = live

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        if self._live():
            self._i.add(amount, _clean(attributes))

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        if self._live():
            self._i.record(amount, _clean(attributes))


class _Span:
    """A span whose string attributes are redacted."""

    __slots__ = ("_s",)

    def __init__(self, span: Any) -> None:
        self._s = span

    def set_attribute(self, key: str, value: Any) -> None:
        if isinstance(value, str):
            value = secrets.redact_recurring(value)
        self._s.set_attribute(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)


class _NoSpan:
    """What :meth:`_Tracer.start_span` returns while no tracer provider records: nothing to
    build, nothing to end."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False


#: The span of every request while no tracer provider records (see :class:`_Tracer`).
NO_SPAN = _NO_SPAN = _NoSpan()


class _Tracer:
    __slots__ = ("_live", "_t")

    def __init__(self, tracer: Any, live: _Live) -> None:
        self._t = tracer
        self._live = live

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> _Span | _NoSpan:
        if not self._live():
            return _NO_SPAN  # the API's proxy with no SDK behind it: its span records nothing
        if "attributes" in kwargs:
            kwargs["attributes"] = _clean(kwargs["attributes"])
        return _Span(self._t.start_span(name, *args, **kwargs))


#: How often a manager without a recording provider looks again at the global one.
RECHECK_S = 0.5


class _Live:
    """Whether an OpenTelemetry provider records anything: an explicit provider unless it is
    the API's no-op one; the global one once an SDK has been set (until then the API hands
    out a proxy whose instruments and spans record nothing, and whose instruments forward to
    the SDK's once one is set). Asking the API for the global provider reads the environment,
    so it is asked at most every :data:`RECHECK_S` seconds; once true it stays true (a global
    provider is set only once)."""

    __slots__ = ("_get", "_next", "_proxy", "_yes")

    def __init__(self, explicit: Any, noop: type, get: Any, proxy: type | None) -> None:
        self._get, self._proxy, self._next = get, proxy, 0.0
        if explicit is not None:
            self._yes = not isinstance(explicit, noop)
            self._get = None
        else:
            self._yes = proxy is None  # proxy type unknown: assume it records
            self()

    def __call__(self) -> bool:
        if self._yes:
            return True
        if self._get is None:
            return False
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + RECHECK_S
        if not isinstance(self._get(), self._proxy):  # type: ignore[arg-type]
            self._yes = True
        return self._yes


def _proxy_meter_provider() -> type | None:
    # The API's global proxy for metrics has no public name (the tracing one has,
    # ProxyTracerProvider); without it every global meter provider counts as recording.
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - another API version
        return None
    return _ProxyMeterProvider


def scope_label(scope: str) -> str:
    """A budget scope as a bounded label: caller keys collapse to ``key``."""
    return "key" if scope.startswith("key:") else scope


class Metrics:
    """The instruments of one manager. Pass providers to isolate (tests); default: global."""

    def __init__(self, meter_provider: MeterProvider | None = None,
                 tracer_provider: TracerProvider | None = None) -> None:
        from opentelemetry import metrics, trace

        mp = meter_provider or metrics.get_meter_provider()
        tp = tracer_provider or trace.get_tracer_provider()
        m = mp.get_meter(SCOPE)
        #: Whether the metrics record (an SDK behind them): what is measured only for them
        #: (the prompt count before a call, for squirrel.tokens.estimate_ratio) is skipped
        #: while they do not.
        self.recording = _Live(meter_provider, metrics.NoOpMeterProvider,
                               metrics.get_meter_provider, _proxy_meter_provider())
        self.tracer = _Tracer(tp.get_tracer(SCOPE), _Live(
            tracer_provider, trace.NoOpTracerProvider, trace.get_tracer_provider,
            trace.ProxyTracerProvider))
        self.op_duration = m.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.token_usage = m.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Tokens used per attempt, by gen_ai.token.type",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.selection_duration = m.create_histogram(
            "squirrel.selection.duration", unit="s", description="ModelSelector.rank time",
            explicit_bucket_boundaries_advisory=(1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 2e-3, 1e-2))
        self.cache_hits = m.create_counter("squirrel.selection.cache.hits",
                                           description="capability index hits")
        self.cache_misses = m.create_counter("squirrel.selection.cache.misses",
                                             description="capability index misses")
        self.attempts = m.create_counter("squirrel.fallback.attempts",
                                         description="upstream attempts by outcome")
        self.cost = m.create_histogram("squirrel.request.cost", unit="USD",
                                       description="cost per request",
                                       explicit_bucket_boundaries_advisory=COST_BUCKETS)
        self.utilization = m.create_histogram(
            "squirrel.budget.utilization", unit="1",
            description="(committed + reserved) / limit per scope, at each reservation",
            explicit_bucket_boundaries_advisory=UTILIZATION_BUCKETS)
        self.unpriced = m.create_counter("squirrel.unpriced.requests",
                                         description="requests to models with unknown price")
        self.overspend = m.create_counter(
            "squirrel.budget.overspend", unit="USD",
            description="spend reported above what was reserved (still recorded)")
        self.estimate_ratio = m.create_histogram(
            "squirrel.tokens.estimate_ratio", unit="1",
            description="reported prompt tokens / counted or estimated prompt tokens, by whether "
                        "the count was exact: resource usage accuracy",
            explicit_bucket_boundaries_advisory=(0.25, 0.5, 0.75, 0.9, 0.99, 1.0, 1.01, 1.1, 1.5, 2))
        self.token_estimates = m.create_counter(
            "squirrel.tokens.estimated", description="prompt counts that were upper bounds")
        self.ratelimit_refusals = m.create_counter(
            "squirrel.ratelimit.refusals",
            description="attempts and requests refused by a rate limit before any upstream call, "
                        "by scope kind and limit kind")
        self._labels: dict[tuple[str, str, str, str | None], tuple[dict[str, Any], ...]] = {}
        for name, value in list(vars(self).items()):  # every instrument redacts its labels
            if hasattr(value, "add") or hasattr(value, "record"):
                setattr(self, name, _Instrument(value, self.recording))

    def accuracy(self, counted: TokenCount, usage: Usage, *, model: str) -> None:
        """How close the pre-call prompt count was to what the provider reported."""
        if usage.source == "reported" and counted.tokens > 0:
            self.estimate_ratio.record(usage.input_tokens / counted.tokens,
                                       {"gen_ai.request.model": model, "exact": counted.exact})

    def selection(self, duration: float, hit: bool) -> None:
        if not self.recording():  # one check for both instruments
            return
        self.selection_duration.record(duration)
        (self.cache_hits if hit else self.cache_misses).add(1)

    def _attempt_labels(self, model: str, provider: str, outcome: str, error: str | None
                        ) -> tuple[dict[str, Any], ...]:
        attrs_: dict[str, Any] = {"gen_ai.request.model": model, "gen_ai.provider.name": provider,
                                  "outcome": outcome}
        if error:
            attrs_["error.type"] = error
        base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                "gen_ai.provider.name": provider}
        return (attrs_, {**base, **({"error.type": error} if error else {})},
                {**base, "gen_ai.token.type": "input"}, {**base, "gen_ai.token.type": "output"})

    def attempt(self, *, model: str, provider: str, outcome: str, error: str | None,
                usage: Usage | None, duration: float) -> None:
        if not self.recording():  # one check for the four instruments
            return
        # Labels are bounded (see the module docstring), so their dicts are built once each;
        # instruments copy what they keep and never change them.
        key = (model, provider, outcome, error)
        labels = self._labels.get(key)
        if labels is None:
            if len(self._labels) >= 4096:
                self._labels.clear()
            labels = self._labels[key] = self._attempt_labels(model, provider, outcome, error)
        self.attempts.add(1, labels[0])
        if outcome == "skipped" or outcome == "refused":
            # No GenAI operation took place (a breaker, a budget, a rate limit said no before
            # any call): its microseconds would pull the upstream latency histogram down.
            return
        self.op_duration.record(duration, labels[1])
        # A charge by ``charge_unanswered`` (usage ``cut``) is an assumption, no count of what
        # was used: the GenAI conventions report only usage the client obtained. Its cost is
        # recorded (squirrel.request.cost), its tokens are in the ledger marked ``cut``.
        if usage is not None and usage.source != "cut":
            self.token_usage.record(usage.input_tokens, labels[2])
            self.token_usage.record(usage.output_tokens, labels[3])

    def request_cost(self, cost: Decimal | None, *, model: str, provider: str) -> None:
        if not self.recording():  # before building labels and a float of the cost
            return
        if cost is None:
            self.unpriced.add(1, {"gen_ai.request.model": model, "gen_ai.provider.name": provider})
        else:
            self.cost.record(float(cost), {"gen_ai.request.model": model,
                                           "gen_ai.provider.name": provider})

    def budget(self, scope: str, period: str, utilization: float) -> None:
        self.utilization.record(utilization, {"scope": scope_label(scope), "period": period})

    def rate_limited(self, refusal: RateLimitExceeded | RateLimitTooSmall) -> None:
        """A rate limit refused an attempt (or, every candidate being at one, a request).
        Labels: the scope's kind (``global``, ``provider``, ``model``, ``key``: never the
        name or key after it), the limit's kind (``rpm``, ``tpm``, ``concurrent``) and its
        source (``configured``, ``upstream``)."""
        self.ratelimit_refusals.add(1, {"scope": refusal.scope.partition(":")[0],
                                        "kind": refusal.kind, "source": refusal.source})

    def overspent(self, amount: Decimal, *, model: str) -> None:
        if amount > 0:
            self.overspend.add(float(amount), {"gen_ai.request.model": model})
