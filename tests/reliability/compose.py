"""The composition the suite attacks: several OpenAI-compatible providers on the faulty server
(some healthy), fallbacks, circuit breakers, the sqlite budget, every key a canary; and the
helpers that read its state afterwards."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from squirrel_models.budget import Charge
from squirrel_models_sqlite_budget import SqliteBudgetBackend, to_nanos

from ..support.canary import leaks as _leaks
from ..support.canary import texts_of as texts_of  # re-exported: the suite's tests use compose.texts_of
from ..support.faulty_server import FaultyServer
from .conftest import CANARY, CANARY_ENV

#: Upstream faults by provider. Model names are behaviours of the faulty server.
FAULTS: dict[str, tuple[str, ...]] = {
    # short read timeout: hangs end as ProviderTimeout
    "alpha": ("hang", "reset", "close", "rate-limit:0.05", "rate-reset:0.05", "error:500", "error:503",
              "malformed", "no-choices", "quota"),
    # streams that break in every way, slow answers and trickles
    "beta": ("truncate", "reset-stream", "hang-stream", "stream-error", "malformed-stream", "trickle:0.02",
             "slow:0.3", "auth", "error:400", "context", "filter", "filter-finish"),
    # a long read timeout: only the request's deadline ends these
    "delta": ("hang", "hang-stream", "slow:5"),
}
HEALTHY: dict[str, tuple[str, ...]] = {"gamma": ("ok", "no-usage")}
PROVIDER_TIMEOUT = {"alpha": 0.4, "beta": 0.4, "gamma": 5.0, "delta": 30.0}
MAX_ATTEMPTS = 3
GLOBAL_LIMIT = Decimal("1000")
TIGHT_LIMIT = Decimal("0.01")
GLOBAL = Charge("global", "total", "total", GLOBAL_LIMIT)


def model_ids(which: dict[str, tuple[str, ...]]) -> list[str]:
    return [f"{p}/{m}" for p, models in which.items() for m in models]


def provider(name: str, server: FaultyServer, models: Iterable[str], price: str) -> dict[str, Any]:
    return {"name": name, "type": "openai", "discover": False,
            "options": {"base_url": server.base_url, "api_key_env": CANARY_ENV, "prices_from": None,
                        "timeout": PROVIDER_TIMEOUT.get(name, 1.0), "connect_timeout": 1.0},
            "models": [{"name": m, "price": {"input": price, "output": price}} for m in models]}


def config(server: FaultyServer, db_path: str, **extra: Any) -> dict[str, Any]:
    """Faulty models are cheaper, so the cost rule ranks them before the healthy ones."""
    providers = [provider(name, server, models, "1") for name, models in FAULTS.items()]
    providers += [provider(name, server, models, "5") for name, models in HEALTHY.items()]
    cfg: dict[str, Any] = {
        "providers": providers,
        "budget": {"backend": "sqlite", "options": {"path": db_path},
                   "limits": [{"scope": "global", "limit": str(GLOBAL_LIMIT)},
                              {"scope": "key:tight", "limit": str(TIGHT_LIMIT)}]},
        "fallback": {"max_attempts": MAX_ATTEMPTS,
                     "options": {"retry": {"base_delay": 0.01, "max_retries": 1}}},
        # Breakers open and close many times during a run, yet faults keep reaching upstream.
        "circuit_breaker": {"failure_threshold": 20, "base_cooldown": 0.05, "max_cooldown": 0.2},
        "timeout": 2.0,
    }
    cfg.update(extra)
    return cfg


def leaks(texts: Iterable[str], secret: str = CANARY) -> list[str]:
    """The texts that show ``secret`` (the suite's canary unless told)."""
    return _leaks(texts, secret)


async def budget_state(backend: SqliteBudgetBackend, charges: Sequence[Charge] = (GLOBAL,)) -> dict[str, Any]:
    """Committed and reserved per charge, the ledger's sum, and the backend's audit."""
    rows = await backend.rows()
    usage = await backend.usage(list(charges))
    audit = await backend.audit()
    ledger_nanos = sum(to_nanos(r.cost) for r in rows if r.cost is not None)
    return {"rows": rows, "usage": {u.scope: u for u in usage}, "audit": audit,
            "ledger_nanos": ledger_nanos, "unknown_cost_rows": sum(r.cost is None for r in rows)}


#: What the manager logs of a settle or release the store could not run in its short try past
#: the request's deadline: its lease is left to expire, by design (``squirrel_models.budget``).
LEASE_LEFT = "stays held until it expires"


def leases_left(records: Sequence[logging.LogRecord]) -> int:
    """How many leases the manager said it left to expire."""
    return sum(LEASE_LEFT in r.getMessage() for r in records)


async def state_after_expiry(backend: SqliteBudgetBackend, charges: Sequence[Charge] = (GLOBAL,)
                             ) -> dict[str, Any]:
    """:func:`budget_state` once every lease has expired (the backend's clock moved ten days
    on) and reconcile has released them."""
    backend.clock = lambda: time.time() + 10 * 24 * 3600
    await backend.reconcile()
    return await budget_state(backend, charges)
