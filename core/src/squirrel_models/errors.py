"""The one error hierarchy of squirrel-models.

Every error the library raises on purpose derives from :class:`SquirrelError`::

    SquirrelError
    ├── ConfigError                  bad configuration; ``field`` names the offending path
    ├── PluginError                  a plugin failed to load or broke a hook contract
    ├── InvalidRequest               a request rejected before any upstream call
    ├── ModelNotFound                no model with that id is registered
    ├── CapabilityNotSupported       no registered model meets the requirements
    ├── ResourceExhausted            refused for lack of money, capacity or time
    │   ├── BudgetExceeded           a budget scope has no headroom for the worst case
    │   ├── CostCeilingExceeded      the request's own cost ceiling is below the worst case
    │   ├── UnpricedModel            a request to a model whose price is unknown, not allowed
    │   ├── RateLimitExceeded        a rate limit (rpm, tpm, concurrency) has no room now
    │   ├── RateLimitTooSmall        a rate limit is below the attempt's worst case: never fits
    │   ├── AllCoolingDown           every candidate's circuit breaker is open
    │   └── DeadlineExceeded         the request's deadline passed
    ├── BudgetStoreError             a budget backend's store failed; ``operation`` names the call
    │   └── BudgetStoreTimeout       it did not answer within the time left (the request's
    │                                deadline, the cleanup bound after it, or its own timeout)
    ├── RateLimitStoreError          a rate-limit store failed; ``operation`` names the call
    ├── FallbackExhausted            every attempt failed; ``attempts`` holds each error
    └── ModelError                   an upstream call failed (raised by providers)
        ├── RateLimited              429 or equivalent; ``retry_after`` in seconds if known
        ├── ProviderTimeout          the upstream did not answer in time
        ├── ProviderConnectionError  connection refused, reset or broken
        ├── ServerError              5xx
        ├── MalformedResponse        a body that is not what the protocol promises
        ├── ContextWindowExceeded    prompt plus output does not fit the model
        ├── ContentFiltered          the upstream refused the content
        ├── AuthenticationError      401/403: wrong or missing credentials
        ├── InvalidRequestError      400/404/422: the upstream rejected the request
        └── MidStreamError           a stream broke after its first chunk; ``partial_text``

``CapabilityNotSupported``, ``UnpricedModel`` and ``RateLimitTooSmall`` are also
:class:`NoModelLeft`: raised when selection left no model, ``excluded`` holds every model's reason.

``ModelError.retryable`` tells the fallback chain whether trying the same model again can
succeed; errors that cannot (400, 401, 403, 404, 422) are never retried.

Error messages never contain secrets: providers build them from status codes and upstream
error *types*, and every error's ``str``/``repr`` passes through
:func:`squirrel_models.secrets.redact` (whole secrets, fragments and escaped forms);
:func:`squirrel_models.secrets.sanitize` replaces foreign exceptions on an error's cause chain
with redacted stand-ins before it leaves the library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .keyshapes import field_message

if TYPE_CHECKING:
    from .ratelimit import UpstreamLimits
    from .types import AttemptRecord, Usage

__all__ = [
    "AllCoolingDown",
    "AuthenticationError",
    "BudgetExceeded",
    "BudgetStoreError",
    "BudgetStoreTimeout",
    "CapabilityNotSupported",
    "ConfigError",
    "ContentFiltered",
    "ContextWindowExceeded",
    "CostCeilingExceeded",
    "DeadlineExceeded",
    "FallbackExhausted",
    "InvalidRequest",
    "InvalidRequestError",
    "MalformedResponse",
    "MidStreamError",
    "ModelError",
    "ModelNotFound",
    "NoModelLeft",
    "PluginError",
    "ProviderConnectionError",
    "ProviderTimeout",
    "RateLimitExceeded",
    "RateLimitStoreError",
    "RateLimitTooSmall",
    "RateLimited",
    "ResourceExhausted",
    "ServerError",
    "SquirrelError",
    "UnpricedModel",
]


def _usd(amount: Decimal) -> str:
    """Format an amount of dollars for a message: enough digits to be useful, no more."""
    if amount >= Decimal("0.01") or amount == 0:
        return f"${amount:.2f}"
    digits = f"{amount:.10f}".rstrip("0")
    return "$" + (digits + "0" if digits.endswith(".") else digits)


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error message shows what it was given: its ``repr``, at most ``limit``
    characters, with what is not printable escaped (a lone surrogate, a line break). Never
    raises: a huge int, a recursive or a hostile object shows as its type, so a message about
    a bad value cannot itself fail."""
    try:
        if isinstance(value, str):
            text = repr(value[:limit])
        elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
            text = f"an int of {value.bit_length()} bits"
        else:
            text = repr(value)
    except Exception:  # RecursionError, a __repr__ that raises: say what it was
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown_path(path: object) -> str:
    """A file system path for a one-line message: as it is, or its bounded repr when it is
    long or holds a line break or another character that is not printable."""
    text = str(path)
    return text if len(text) <= 200 and text.isprintable() else shown(text, 200)


class SquirrelError(Exception):
    """Root of every error squirrel-models raises on purpose.

    Its ``str`` and ``repr`` pass through :func:`squirrel_models.secrets.redact` whenever they
    are shown, so no message can show a registered secret, whole, in part or escaped."""

    def __str__(self) -> str:
        from .secrets import redact

        try:
            text = super().__str__()
        except Exception:  # an argument whose own __str__ raises (a plugin's): say so
            return f"<{type(self).__name__} whose message could not be shown>"
        return redact(text)

    def __repr__(self) -> str:
        from .secrets import redact

        try:
            text = super().__repr__()
        except Exception:
            return f"{type(self).__name__}(<its arguments could not be shown>)"
        return redact(text)


class ConfigError(SquirrelError):
    """Configuration that cannot work. ``field`` is the dotted path of the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        # field_message: a field named like a credential (token) stays named where shown.
        super().__init__(field_message(field, message) if field else message)


class PluginError(SquirrelError):
    """A plugin that failed to import, raised in a hook, or violates the hook specs."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}" if plugin else message)


class InvalidRequest(SquirrelError, ValueError):
    """A request or requirement refused before any upstream call; ``field`` names the part."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(field_message(field, message) if field else message)


class ModelNotFound(SquirrelError, LookupError):
    """No model with ``model_id`` is registered."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"no model {shown(model_id, 200)} is registered")


class NoModelLeft:
    """What every error raised when selection left no model to try shares
    (:class:`CapabilityNotSupported`, :class:`UnpricedModel`, :class:`RateLimitTooSmall`):
    ``excluded`` maps every model id to why it was left out, and the message names the first
    five reasons, so a user fixing one cause sees the others too. Empty when the error came
    from one attempt rather than from a selection that left nothing."""

    #: model id -> why selection left it out (the whole map; the message shows five).
    excluded: dict[str, str]

    def _left_out(self, excluded: Mapping[str, str] | None, about: str | None = None) -> str:
        """Keep ``excluded`` and return the message's tail: every reason, or, for an error
        about one model (``about``), the others' after ``no other model meets the
        requirements``."""
        self.excluded = dict(excluded or {})
        if about is None:
            return _why_excluded(self.excluded)
        others = {k: v for k, v in self.excluded.items() if k != about}
        return f"; no other model meets the requirements{_why_excluded(others)}" if others else ""


def _why_excluded(excluded: Mapping[str, str]) -> str:
    """``; model: reason`` for the first five exclusions (then how many more): the whole map is
    on the error's ``excluded``."""
    if not excluded:
        return ""
    detail = "; " + "; ".join(f"{k}: {v}" for k, v in list(excluded.items())[:5])
    if len(excluded) > 5:
        detail += f"; and {len(excluded) - 5} more"
    return detail


class CapabilityNotSupported(NoModelLeft, SquirrelError):
    """No registered model meets the requirements. ``excluded`` maps model id to the reason."""

    def __init__(self, message: str, *, excluded: Mapping[str, str] | None = None) -> None:
        super().__init__(message + self._left_out(excluded))


class ResourceExhausted(SquirrelError):
    """Refused for lack of money, capacity or time."""


class BudgetExceeded(ResourceExhausted):
    """The worst case of an attempt does not fit a budget scope's headroom."""

    def __init__(
        self,
        *,
        scope: str,
        period: str,
        limit: Decimal,
        committed: Decimal,
        reserved: Decimal,
        requested: Decimal,
        model_id: str | None = None,
        hint: str = "",
    ) -> None:
        self.scope, self.period, self.limit = scope, period, limit
        self.committed, self.reserved, self.requested = committed, reserved, requested
        self.model_id, self.hint = model_id, hint
        headroom = max(limit - committed - reserved, Decimal(0))
        super().__init__(
            f"budget {scope} ({period}) cannot take {_usd(requested)}: "
            f"{_usd(headroom)} left of {_usd(limit)} "
            f"({_usd(committed)} spent, {_usd(reserved)} reserved)"
            + (f" for model {model_id}" if model_id else "")
            + (f"; {hint}" if hint else "")
        )

    def with_hint(self, hint: str) -> BudgetExceeded:
        """The same refusal, saying what to change (``hint``)."""
        return BudgetExceeded(scope=self.scope, period=self.period, limit=self.limit,
                              committed=self.committed, reserved=self.reserved,
                              requested=self.requested, model_id=self.model_id, hint=hint)


class CostCeilingExceeded(ResourceExhausted):
    """The request's worst-case cost is above the ceiling the caller set."""

    def __init__(self, *, worst_case: Decimal, ceiling: Decimal, model_id: str | None = None) -> None:
        self.worst_case, self.ceiling, self.model_id = worst_case, ceiling, model_id
        where = f" on {model_id}" if model_id else ""
        super().__init__(
            f"worst case {_usd(worst_case)}{where} exceeds the {_usd(ceiling)} ceiling"
        )


class UnpricedModel(NoModelLeft, ResourceExhausted):
    """A request to a model whose price is unknown (never treated as $0), which the
    configuration does not allow (``[budget] allow_unpriced``)."""

    def __init__(self, model_id: str, *, excluded: Mapping[str, str] | None = None) -> None:
        self.model_id = model_id
        super().__init__(
            f"model {model_id} has no known price, so its spend cannot be bounded; configure "
            "its price, or set [budget] allow_unpriced = true to accept unbounded spend"
            + self._left_out(excluded, model_id)
        )


class RateLimitExceeded(ResourceExhausted):
    """A rate limit has no room for the attempt now: ``kind`` is ``rpm`` (requests per
    window), ``tpm`` (tokens per window) or ``concurrent`` (requests in flight) on ``scope``.

    ``used`` counts what the window (or the requests in flight) holds now, ``requested`` what
    the attempt needs (1 request, or its worst-case tokens). ``retry_in`` is the seconds until
    that much room comes back: 0 or more when the window will free it, None when it cannot be
    known (a concurrency slot comes back when a request in flight ends) or never comes (more
    tokens than the limit itself).
    """

    def __init__(self, *, scope: str, kind: str, limit: int, used: int, requested: int,
                 retry_in: float | None, model_id: str | None = None,
                 source: str = "configured", why: str = "") -> None:
        self.scope, self.kind, self.limit, self.used = scope, kind, limit, used
        self.requested, self.retry_in, self.model_id = requested, retry_in, model_id
        #: ``configured`` (a limit in the configuration) or ``upstream`` (announced by the
        #: provider: rate-limit headers, ``Retry-After``, out of credit).
        self.source = source
        #: What the refusal is when it is no count (``out of credit (HTTP 402)``), else "".
        self.why = why
        super().__init__(self.reason() + (f" for model {model_id}" if model_id else ""))

    @property
    def never(self) -> bool:
        """The attempt can never fit: it needs more than the limit itself."""
        return self.kind in ("rpm", "tpm") and not self.why and self.requested > self.limit

    def reason(self) -> str:
        """One line for a decision's exclusion reason: ``rpm limit reached on model:p/m
        (60/60), room again in 12 s``."""
        what = {"rpm": "rpm", "tpm": "tpm", "concurrent": "max_concurrent"}.get(self.kind,
                                                                              self.kind)
        origin = " (announced upstream)" if self.source == "upstream" else ""
        if self.why:
            return self.why + (f", room again in {max(self.retry_in, 0.0):,.0f} s"
                               if self.retry_in is not None else "")
        if self.never:
            return _below(what, self.limit, self.scope, origin, self.requested, self.kind)
        head = f"{what} limit reached on {self.scope}{origin} ({self.used:,}/{self.limit:,})"
        if self.retry_in is not None:
            return head + f", room again in {max(self.retry_in, 0.0):.3g} s"
        if self.kind == "concurrent":
            return head + ", room when a request in flight ends"
        return head

    def with_model(self, model_id: str | None, retry_in: float | None = -1.0
                   ) -> RateLimitExceeded:
        """The same refusal, naming the model it was for (and, given, a new ``retry_in``)."""
        return RateLimitExceeded(scope=self.scope, kind=self.kind, limit=self.limit,
                                 used=self.used, requested=self.requested,
                                 retry_in=self.retry_in if retry_in == -1.0 else retry_in,
                                 model_id=model_id, source=self.source, why=self.why)


def _below(what: str, limit: int, scope: str, origin: str, requested: int, kind: str) -> str:
    need = (f"{requested:,} tokens this attempt needs at worst (its prompt plus the output "
            "cap)" if kind == "tpm" else f"{requested:,} request(s) this attempt needs")
    return f"{what} limit {limit:,} on {scope}{origin} is below the {need}"


class RateLimitTooSmall(NoModelLeft, ResourceExhausted):
    """A rate limit smaller than what one attempt needs in a whole window: its worst-case
    tokens (prompt plus the output cap sent upstream) above a ``tpm`` limit, or any request on
    a caller key's limit of 0 (0 elsewhere is refused at start-up). No wait can admit it, so
    it is never retryable (``retry_in`` is None): a smaller ``max_tokens`` or prompt, or
    another model, can. Selection leaves out the models a configured limit can never admit
    (``squirrel_models.ratefit``); a request none can take ends with this error.

    ``kind`` (``tpm``, ``rpm``, ``concurrent``), ``limit``, ``requested`` (the attempt's worst case),
    ``scope``, ``source`` (``configured`` or ``upstream``) and ``model_id`` as on
    :class:`RateLimitExceeded`; the fallback chain still tries the next candidate, whose
    limits (or worst case) may fit. ``excluded``: as :class:`NoModelLeft` (empty for an
    attempt's refusal).
    """

    #: Never: the limit itself is too small (read like :attr:`RateLimitExceeded.retry_in`).
    retry_in: float | None = None
    retryable = False

    def __init__(self, *, scope: str, kind: str, limit: int, requested: int,
                 model_id: str | None = None, source: str = "configured",
                 excluded: Mapping[str, str] | None = None) -> None:
        self.scope, self.kind, self.limit, self.requested = scope, kind, limit, requested
        self.model_id, self.source = model_id, source
        super().__init__(self.reason() + (f" for model {model_id}" if model_id else "")
                         + ": it can never be admitted, whatever the wait"
                         + self._left_out(excluded, model_id))

    @classmethod
    def from_refusal(cls, refusal: RateLimitExceeded, model_id: str | None = None
                     ) -> RateLimitTooSmall:
        """The refusal of a store that said the attempt needs more than the limit itself
        (:attr:`RateLimitExceeded.never`)."""
        return cls(scope=refusal.scope, kind=refusal.kind, limit=refusal.limit,
                   requested=refusal.requested, model_id=model_id or refusal.model_id,
                   source=refusal.source)

    def reason(self) -> str:
        """``tpm limit 100 on model:p/m is below the 140 tokens this attempt needs at worst
        (its prompt plus the output cap)``."""
        what = {"rpm": "rpm", "concurrent": "max_concurrent"}.get(self.kind, "tpm")
        return _below(what, self.limit, self.scope,
                      " (announced upstream)" if self.source == "upstream" else "",
                      self.requested, self.kind)

    def with_model(self, model_id: str | None, retry_in: float | None = -1.0
                   ) -> RateLimitTooSmall:
        """The same refusal, naming the model it was for."""
        return RateLimitTooSmall(scope=self.scope, kind=self.kind, limit=self.limit,
                                 requested=self.requested, model_id=model_id,
                                 source=self.source, excluded=self.excluded)


class AllCoolingDown(ResourceExhausted):
    """Every candidate's circuit breaker is open; ``retry_at`` is the earliest reopening."""

    def __init__(self, *, retry_at: datetime, retry_in: float, models: Sequence[str]) -> None:
        self.retry_at, self.retry_in, self.models = retry_at, retry_in, tuple(models)
        super().__init__(
            f"all {len(self.models)} candidate model(s) are cooling down after failures; "
            f"earliest retry in {retry_in:.1f}s at {retry_at.isoformat(timespec='seconds')}"
        )


class DeadlineExceeded(ResourceExhausted, TimeoutError):
    """The request's deadline passed. ``attempts`` are those made before it did."""

    def __init__(self, *, timeout: float, attempts: Sequence[AttemptRecord] = ()) -> None:
        self.timeout, self.attempts = timeout, tuple(attempts)
        super().__init__(
            f"request did not finish within its {timeout:g}s deadline "
            f"({len(self.attempts)} attempt(s) made)"
        )


class BudgetStoreError(SquirrelError):
    """A budget backend's store (a database file, a server) failed. ``operation`` names the
    call (``reserve``, ``settle``, ``release``, ``record``, ``usage``...). Backends raise
    subclasses of this (the SQLite and PostgreSQL backends' own ``BudgetStoreError``)."""

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        self.operation = operation
        super().__init__(message)


class BudgetStoreTimeout(BudgetStoreError):
    """A budget store call did not finish within the time it was given, and was stopped
    (the database call itself, not just the wait for it).

    ``by_deadline``: the time that ran out was the caller's (the request's deadline, or the
    cleanup bound after it; see ``squirrel_models.budget.store_deadline``) rather than the
    backend's own timeout. The manager then ends the request with :class:`DeadlineExceeded`,
    this error as its cause.

    ``pending``: the caller stopped waiting, but the call itself was not stopped: it still runs
    in the background (a worker thread) within its own bound, and may yet take effect (a
    settlement commits with its ledger row, a ledger row is written; a reservation it makes is
    released at once). See :class:`squirrel_models.storethreads.StoreThreads`.
    """

    def __init__(self, message: str, *, operation: str | None = None,
                 by_deadline: bool = False, pending: bool = False) -> None:
        self.by_deadline = by_deadline
        self.pending = pending
        super().__init__(message, operation=operation)


class RateLimitStoreError(SquirrelError):
    """A rate-limit store (a server shared by many instances) failed or did not answer in
    time. ``operation`` names the call (``reserve``, ``settle``, ``release``, ``usage``).
    A store configured to fail closed raises it; one that fails open logs and admits."""

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        self.operation = operation
        super().__init__(message)


class FallbackExhausted(SquirrelError):
    """Every attempt failed. ``attempts`` holds each attempt's record, error included."""

    def __init__(self, attempts: Sequence[AttemptRecord], *, reason: str = "") -> None:
        self.attempts = tuple(attempts)
        lines = [
            f"  {a.number}. {a.model_id}: {type(a.error).__name__}: {a.error}"
            for a in self.attempts
            if a.error is not None
        ]
        head = f"all {len(self.attempts)} attempt(s) failed"
        if reason:
            head += f" ({reason})"
        super().__init__(head + (":\n" + "\n".join(lines) if lines else ""))

    @property
    def errors(self) -> list[BaseException]:
        return [a.error for a in self.attempts if a.error is not None]


class ModelError(SquirrelError):
    """An upstream call failed. Providers raise subclasses of this at their boundary."""

    retryable: bool = True
    #: Tokens the failed attempt is known to have used (a broken stream's part), if any.
    usage: Usage | None = None
    #: What the core charged for ``usage`` (set by the core, None if nothing or unpriced).
    cost: Decimal | None = None
    #: What the upstream's rate-limit headers said with this error, if anything (set by
    #: :func:`squirrel_models.upstream.error_from_status`).
    rate_limits: UpstreamLimits | None = None
    #: The upstream said the account is out of credit (402, ``insufficient_quota``).
    out_of_credit: bool = False
    #: Seconds the upstream asked to wait before the next call (``Retry-After`` on a 429, a
    #: 502/503/504 or Anthropic's 529), None if it did not say. Declared here, not only on
    #: :class:`RateLimited`: reading it off a ``ServerError`` was an ``AttributeError``.
    retry_after: float | None = None
    #: Whether the request may have reached the upstream, which then may bill it although
    #: no answer came: True (it left: a read timeout, a connection lost while waiting for
    #: the answer, a 504, a 200 answer that could not be read), False (provably not: the
    #: connection was never made, a pool timeout), None (the raiser did not say: the core
    #: judges by the error, see :func:`squirrel_models.unanswered.may_have_reached`). Set by
    #: :func:`squirrel_models.upstream.boundary` from the client's exception and by
    #: :func:`squirrel_models.upstream.error_from_status` for a 504.
    sent: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        provider: str | None = None,
        status_code: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.model_id, self.provider, self.status_code = model_id, provider, status_code
        self.usage = usage
        super().__init__(message)

    def with_context(self, *, model_id: str, provider: str) -> ModelError:
        """Fill in which model and provider failed, when the raiser did not know."""
        self.model_id = self.model_id or model_id
        self.provider = self.provider or provider
        return self


class RateLimited(ModelError):
    """The upstream asked us to slow down; ``retry_after`` seconds if it said."""

    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ProviderTimeout(ModelError):
    """The upstream did not answer in time."""


class ProviderConnectionError(ModelError):
    """The connection could not be made or broke before an answer."""


class ServerError(ModelError):
    """The upstream failed on its side (5xx)."""


class MalformedResponse(ModelError):
    """The upstream answered with something the protocol does not allow."""


class ContextWindowExceeded(ModelError):
    """Prompt plus requested output does not fit the model's context window."""

    retryable = False

    def __init__(self, message: str = "context window exceeded", *, needed: int | None = None,
                 window: int | None = None, **kw: Any) -> None:
        self.needed, self.window = needed, window
        super().__init__(message, **kw)


class ContentFiltered(ModelError):
    """The upstream refused the content."""

    retryable = False


class AuthenticationError(ModelError):
    """Wrong or missing credentials (401, 403). Another provider may still succeed."""

    retryable = False


class InvalidRequestError(ModelError):
    """The upstream rejected the request itself (400, 404, 422).

    ``model_specific``: the request is fine, this model cannot take it (a model without tool
    support asked to use tools): the fallback chain moves to another model instead of giving up.
    """

    retryable = False

    def __init__(self, message: str, *, model_specific: bool = False, **kw: Any) -> None:
        self.model_specific = model_specific
        super().__init__(message, **kw)


class MidStreamError(ModelError):
    """A stream broke after its first chunk. It is never replayed; the partial output is kept.

    ``partial_text`` is what arrived, ``usage`` what was charged for it.
    """

    retryable = False

    def __init__(self, message: str, *, partial_text: str = "", usage: Usage | None = None,
                 **kw: Any) -> None:
        self.partial_text = partial_text
        super().__init__(message, usage=usage, **kw)
