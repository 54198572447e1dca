"""A backend's own ``summarize`` (aggregated in its store) against the reference,
``squirrel_models.ledger.summarize`` over the same rows: random ledgers, every grouping, whole
and windowed. Shared by the SQLite and PostgreSQL suites; imports core alone."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from squirrel_models.budget import LedgerBackend, LedgerRow, LedgerSummaries
from squirrel_models.ledger import CHARGE_OUTCOME, GROUPINGS, render, summarize

START = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
OUTCOMES = ("ok", "ok", "ok", "error", "error", "refused", "skipped")
SCOPES = ((), ("global",), ("global", "key:team-a"), ("global", "provider:p", "key:team-b"),
          ("key:team-a",), ("global", "global"))
MODELS = (("p", "p/a"), ("p", "p/b"), ("q", "q/x"), ("q", "q/ünï"), ("r", "R/z"))


def _cost(rng: random.Random) -> Decimal | None:
    kind = rng.randrange(7)
    if kind == 0:
        return None
    if kind == 1:
        return Decimal(0)
    if kind == 2:  # a round amount: few digits, so exponents differ between rows
        return Decimal(rng.randrange(1, 100)).scaleb(-rng.randrange(0, 10))
    if kind == 3:  # more digits than nano-USD: rounded up when stored
        return Decimal(rng.randrange(1, 10**12)).scaleb(-12)
    if kind == 4:
        return Decimal(rng.randrange(1, 10**6)) * 1000
    return Decimal(rng.randrange(1, 10**9)).scaleb(-9)


def random_rows(seed: int, requests: int = 120) -> list[LedgerRow]:
    """A few hundred attempts of ``requests`` requests (1 to 4 attempts each, some on other
    models), over five days with times close to midnight UTC."""
    rng = random.Random(seed)
    rows = []
    for i in range(requests):
        rid = f"req-{seed}-{i}"
        at = START + timedelta(microseconds=rng.randrange(5 * 86400 * 10**6))
        for attempt in range(1, rng.choice((1, 1, 2, 3, 4)) + 1):
            provider, model = rng.choice(MODELS)
            outcome = rng.choice(OUTCOMES)
            rows.append(LedgerRow(
                rid, attempt, provider, model, outcome,
                input_tokens=rng.randrange(0, 5000), output_tokens=rng.randrange(0, 2000),
                cached_tokens=rng.randrange(0, 100),
                cost=_cost(rng) if outcome in ("ok", "error") else rng.choice((None, Decimal(0))),
                error_type="ServerError" if outcome == "error" else None,
                latency_s=rng.random(), scopes=rng.choice(SCOPES),
                at=at + timedelta(microseconds=rng.randrange(0, 3 * 10**6)),
                usage_source=rng.choice(("reported", "reported", "counted", "estimated", "cut"))))
        if rng.randrange(10) == 0:  # an expired budget slice charged in full: money, no request
            rows.append(LedgerRow(
                f"slice:{seed}-{i}", 0, "(slice)", "(unflushed)", CHARGE_OUTCOME,
                cost=_cost(rng) or Decimal("0.01"), scopes=rng.choice(SCOPES),
                at=at, usage_source="slice"))
    # Exactly midnight, and a microsecond before: the day boundary.
    rows.append(LedgerRow("edge-1", 1, "p", "p/a", "ok", cost=Decimal("0.1"), scopes=("global",),
                          at=datetime(2026, 3, 3, tzinfo=UTC)))
    rows.append(LedgerRow("edge-2", 1, "p", "p/a", "ok", cost=Decimal("1"),
                          at=datetime(2026, 3, 3, tzinfo=UTC) - timedelta(microseconds=1)))
    rng.shuffle(rows)
    return rows


def _exact(summary: list[dict[str, Any]]) -> list[list[tuple[str, type, Any]]]:
    """Every value with its type, and Decimals by their digits and exponent (``==`` on
    Decimals ignores the exponent, which ``str`` shows)."""
    return [[(k, type(v), v.as_tuple() if isinstance(v, Decimal) else v) for k, v in row.items()]
            for row in summary]


async def assert_summaries_match(backend: Any, seed: int) -> None:
    """Fill ``backend``'s ledger with :func:`random_rows` and check that its ``summarize``
    equals the reference over ``rows()`` for every grouping, whole and in windows."""
    assert isinstance(backend, LedgerBackend) and isinstance(backend, LedgerSummaries)
    rows = random_rows(seed)
    for i in range(0, len(rows), 50):
        await backend.record(rows[i:i + 50])
    rng = random.Random(seed)
    windows: list[tuple[datetime | None, datetime | None]] = [
        (None, None), (START + timedelta(days=1), None), (None, START + timedelta(days=3)),
        (datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 4, 12, tzinfo=UTC)),
        (START + timedelta(seconds=rng.randrange(86400 * 2)),
         START + timedelta(days=2, seconds=rng.randrange(86400 * 3))),
        (START + timedelta(days=10), None)]  # empty
    for since, until in windows:
        window = await backend.rows(since, until)
        for by in GROUPINGS:
            expected = summarize(window, by)
            got = await backend.summarize(by, since, until)
            assert got == expected, (by, since, until)
            assert _exact(got) == _exact(expected), (by, since, until)
            for fmt in ("table", "json", "csv"):
                assert render(got, fmt) == render(expected, fmt)
    assert len(await backend.rows()) == len(rows)
