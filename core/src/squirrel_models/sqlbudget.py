"""What every SQL budget backend shares: money as integer nano-USD, one key per bucket, the
refusal that becomes :class:`~squirrel_models.errors.BudgetExceeded`, the reservation
lifecycle around cancellation (:func:`~squirrel_models.budget.reserve_shielded`, re-exported
here), and the ledger row as plain values.

A SQL backend keeps running totals per ``(scope, bucket)`` (``committed`` and ``reserved``, in
nano-USD) and one row per open lease. Amounts are rounded *up* to the nano (a budget never
under-counts), limits *down*: rounding never lets spend past a limit. Keys keep the order of
the charges (a refusal names the first charge without headroom); a backend that takes row
locks takes them in ``sorted()`` key order, so two reservations never deadlock on each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import attrs

from .budget import Charge, LedgerRow, reserve_shielded
from .errors import BudgetExceeded, ConfigError, InvalidRequest, shown
from .ledger import UNREPORTED, sort_summary, summary_row
from .money import MONEY

__all__ = [
    "COST_ZEROS_SQL",
    "LEDGER_FIELDS",
    "MAX_NANOS",
    "NANOS",
    "UNREPORTED_SQL",
    "BucketKey",
    "Refusal",
    "bucket_keys",
    "from_nanos",
    "ledger_row",
    "ledger_values",
    "nanos_sum",
    "one_of",
    "positive",
    "retention_days",
    "reserve_shielded",
    "summary_from_totals",
    "to_nanos",
]

NANOS = Decimal(10) ** 9
#: About 4.6 billion USD: far from a signed 64-bit integer even when summed.
MAX_NANOS = 2**62
#: The longest timeout option (busy, connect and statement timeouts): 24 days, within the
#: signed 32-bit milliseconds SQLite's busy timeout takes.
MAX_SECONDS = 24 * 86400


def to_nanos(amount: Decimal, *, up: bool = True, what: str = "amount") -> int:
    """``amount`` USD as integer nano-USD, rounded up (or down with ``up=False``). An amount
    that is not finite, negative or above :data:`MAX_NANOS` raises :class:`InvalidRequest`
    (a ValueError) naming ``what``."""
    # InvalidRequest is a ValueError too, and a SquirrelError: a backend handed an amount
    # it cannot store says so in the library's own terms (issue 12: a raw ValueError escaped).
    if not amount.is_finite() or amount < 0:
        raise _bad_amount(f"{what} must be a finite amount >= 0, got {amount}", what)
    # In MONEY: a caller's narrowed decimal context rounded the product before it was rounded up.
    n = int(MONEY.multiply(amount, NANOS).to_integral_value(
        rounding=ROUND_CEILING if up else ROUND_FLOOR, context=MONEY))
    if n > MAX_NANOS:
        raise _bad_amount(f"{what} {amount} is too large: a budget store holds at most "
                          f"{from_nanos(MAX_NANOS)} USD", what)
    return n


def _bad_amount(message: str, what: str) -> InvalidRequest:
    err = InvalidRequest(message)
    err.field = what
    return err


def from_nanos(n: int) -> Decimal:
    """Integer nano-USD as USD."""
    return MONEY.divide(Decimal(n), NANOS)


@attrs.frozen(order=True)
class BucketKey:
    """One ``(scope, bucket)`` running total and its limit in nano-USD."""

    scope: str
    bucket: str
    limit: int


def bucket_keys(charges: Sequence[Charge], *, unbounded: bool = False) -> list[BucketKey]:
    """One key per ``(scope, bucket)`` with the tightest limit, in the order of ``charges``.

    A limit that is not finite raises ValueError, unless ``unbounded``: then +Infinity counts
    as :data:`MAX_NANOS` (no limit in practice), as the SQLite backend reads it. NaN and
    -Infinity are never a limit.
    """
    keys: dict[tuple[str, str], int] = {}
    for c in charges:
        no_limit = unbounded and c.limit.is_infinite() and c.limit > 0
        limit = MAX_NANOS if no_limit else to_nanos(c.limit, up=False, what="limit")
        k = (c.scope, c.bucket)
        keys[k] = min(keys.get(k, limit), limit)
    return [BucketKey(s, b, lim) for (s, b), lim in keys.items()]


@attrs.frozen
class Refusal:
    """The first charge without headroom (nano-USD), as a store reports it."""

    scope: str
    bucket: str
    limit: int
    committed: int
    reserved: int

    def error(self, requested: Decimal) -> BudgetExceeded:
        return BudgetExceeded(scope=self.scope, period=self.bucket, limit=from_nanos(self.limit),
                              committed=from_nanos(self.committed),
                              reserved=from_nanos(self.reserved), requested=requested)


#: The ledger's columns, in the order of :func:`ledger_values`.
LEDGER_FIELDS = ("at", "request_id", "attempt", "provider", "model", "outcome", "input_tokens",
                 "output_tokens", "cached_tokens", "reasoning_tokens", "cost", "error_type",
                 "latency_s", "scopes", "usage_source")


def ledger_values(row: LedgerRow) -> tuple[Any, ...]:
    """``row`` as plain values in :data:`LEDGER_FIELDS` order: ``at`` an aware UTC datetime,
    ``cost`` nano-USD rounded up (None: unknown price), ``scopes`` a list of strings."""
    at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC)
    return (at.astimezone(UTC), row.request_id, row.attempt, row.provider, row.model, row.outcome,
            row.input_tokens, row.output_tokens, row.cached_tokens, row.reasoning_tokens,
            None if row.cost is None else to_nanos(row.cost, what="cost"), row.error_type,
            row.latency_s, list(row.scopes), row.usage_source)


def ledger_row(values: Sequence[Any]) -> LedgerRow:
    """The inverse of :func:`ledger_values`."""
    (at, rid, attempt, provider, model, outcome, tin, tout, tcached, treason, cost, error,
     latency, scopes, source) = values
    if isinstance(at, datetime) and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return LedgerRow(rid, int(attempt), provider, model, outcome, int(tin), int(tout), int(tcached),
                     int(treason), None if cost is None else from_nanos(int(cost)), error,
                     float(latency), tuple(scopes), at.astimezone(UTC), source)


# --- usage summaries in SQL ------------------------------------------------------------

#: ``min`` of this over a group's priced rows is what :func:`nanos_sum` needs: how many
#: trailing zeros (at most 9) the row's ``cost`` in nano-USD has.
COST_ZEROS_SQL = ("CASE WHEN cost IS NULL THEN NULL "
                  + " ".join(f"WHEN cost % {10 ** z} = 0 THEN {z}" for z in range(9, 0, -1))
                  + " ELSE 0 END")


#: True for a ledger row (``w``) whose tokens no provider reported
#: (:data:`~squirrel_models.ledger.UNREPORTED`): what ``unreported_tokens`` sums.
UNREPORTED_SQL = f"w.usage_source IN ({', '.join(repr(s) for s in UNREPORTED)})"


def nanos_sum(total: int, zeros: int | None) -> Decimal:
    """The sum of :func:`from_nanos` over some costs, as Python's ``Decimal(0) + ...`` makes it,
    from their ``total`` in nano-USD and the fewest trailing ``zeros`` (<= 9) of any of them
    (None: no costs).

    The value is ``total`` nano-USD; the *exponent* matters too, since ``str()`` shows it (in
    JSON and CSV) and division keeps it: ``from_nanos(n)`` has exponent ``min(0, zeros(n) - 9)``
    and a sum takes the smallest exponent of its terms (``Decimal(0)``'s is 0).
    """
    exponent = 0 if zeros is None else min(0, zeros - 9)
    return Decimal(f"{total // 10 ** (9 + exponent)}E{exponent}")


def summary_from_totals(totals: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """A usage summary (as :func:`squirrel_models.ledger.summarize` returns it) from one row of
    integer totals per group: ``(group, requests, attempts, errors, fallbacks, input_tokens,
    output_tokens, cost_nanos, cost_zeros, unpriced, unreported_tokens)``, where
    ``cost_nanos`` sums the known costs (None if none), ``cost_zeros`` is
    ``min(COST_ZEROS_SQL)`` over them and ``unreported_tokens`` sums the tokens of the rows
    whose ``usage_source`` is in :data:`~squirrel_models.ledger.UNREPORTED`."""
    out = [summary_row(str(group), requests=int(requests), attempts=int(attempts or 0),
                       errors=int(errors or 0), fallbacks=int(fallbacks or 0),
                       input_tokens=int(tin or 0), output_tokens=int(tout or 0),
                       cost=nanos_sum(int(cost or 0), None if zeros is None else int(zeros)),
                       unpriced=int(unpriced or 0), unreported_tokens=int(unreported or 0))
           for (group, requests, attempts, errors, fallbacks, tin, tout, cost, zeros, unpriced,
                unreported) in totals]
    return sort_summary(out)


# --- option validators (attrs) -----------------------------------------------------------


def positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    """An attrs validator: a finite number > 0 (not a bool), else a ConfigError naming the
    field; a timeout (``..._timeout_s``) at most :data:`MAX_SECONDS`, which the drivers' millisecond
    timeouts (a C ``int`` in SQLite) can hold."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"must be a finite number > 0, got {value!r}", field=attribute.name)
    if attribute.name.endswith("timeout_s") and value > MAX_SECONDS:
        raise ConfigError(f"must be at most {MAX_SECONDS:,} seconds (24 days), got {value!r}",
                          field=attribute.name)


def one_of(*allowed: str) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    """An attrs validator: ``value`` in ``allowed``, else a ConfigError naming the field."""
    def check(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in allowed:
            raise ConfigError(f"must be one of {', '.join(allowed)}, got {value!r}",
                              field=attribute.name)
    return check


#: The longest ``ledger_retention_days`` (100 years). Far more (800,000 days) put the
#: cut-off before year 1, and every start-up's ``reconcile`` raised OverflowError.
MAX_RETENTION_DAYS = 36_500


def retention_days(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    """An attrs validator for ``ledger_retention_days``: None (keep everything) or a whole
    number of days from 1 to :data:`MAX_RETENTION_DAYS`, else a ConfigError naming the field."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, int)
            or not 0 < value <= MAX_RETENTION_DAYS):
        raise ConfigError(f"must be a whole number of days from 1 to {MAX_RETENTION_DAYS:,} (or "
                          f"left out to keep every row), got {shown(value)}", field=attribute.name)
