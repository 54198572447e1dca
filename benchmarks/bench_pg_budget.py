"""PostgreSQL budget backend: reserve + settle pairs per second with 1 and 4 processes, beside
the SQLite backend in the same run, and the latency it adds per request (p50, p99).

Starts a throwaway PostgreSQL server on 127.0.0.1 (``synchronous_commit=off``, the durability
of SQLite's ``synchronous=NORMAL``: a crash of either process loses nothing, a power loss may
lose the last commits). Run ``python benchmarks/bench_pg_budget.py`` (``--quick`` for a smoke
run). ``main(quick)`` prints the figures and returns them as a dict.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _budget_common import (  # noqa: E402
    AMOUNT,
    CHARGES,
    ROW,
    SPENT,
    cli,
    durations,
    latency_rows,
    opened,
    pair_rates,
    print_latency,
    served,
)
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend  # noqa: E402
from squirrel_models.secrets import Secret  # noqa: E402
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions  # noqa: E402
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions  # noqa: E402

from tests.postgres_budget.pgserver import PgServer, find_bindir  # noqa: E402

URL_ENV = "SQUIRREL_BENCH_PG_URL"  # the URL goes to workers by environment, never argv


def _backend(kind: str, where: str) -> Any:
    if kind == "memory":
        return MemoryBudgetBackend()
    slices = kind.endswith("+slices")
    kind = kind.removesuffix("+slices")
    if kind == "sqlite":
        return SqliteBudgetBackend(SqliteBudgetOptions(path=where, slices=slices))
    driver = kind.split(":", 1)[1] if ":" in kind else "auto"
    return PostgresBudgetBackend(PostgresBudgetOptions(schema=where, driver=driver, max_connections=8,
                                                       slices=slices),
                                 url=Secret(os.environ[URL_ENV]))


async def _latency(kind: str, where: str, n: int) -> list[float]:
    """Seconds per request's budget work, one at a time: reserve, settle, and (for the SQL
    backends) the ledger row."""
    backend = await opened(_backend(kind, where))
    samples = []
    for i in range(n + n // 10):
        t0 = time.perf_counter()
        r = await backend.reserve(CHARGES, AMOUNT, ttl=600)
        await backend.settle(r, SPENT)
        if kind != "memory":
            await backend.record([ROW])
        if i >= n // 10:  # warm-up excluded
            samples.append(time.perf_counter() - t0)
    await backend.aclose()
    return samples


def main(quick: bool = False) -> dict[str, Any]:
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server programs (apt-get install -y postgresql)")
    seconds, n_latency = durations(quick)
    results: dict[str, Any] = {"title": "PostgreSQL budget backend beside SQLite"}
    server = PgServer.create(bindir)
    server.extra = ("-c", "synchronous_commit=off")
    with served(server, URL_ENV), tempfile.TemporaryDirectory() as tmp:
        def where(kind: str) -> str:
            if kind.startswith("postgres"):
                return f"b_{uuid.uuid4().hex[:10]}"
            return str(Path(tmp) / f"{kind}-{uuid.uuid4().hex[:6]}.sqlite3")

        print(f"reserve + settle pairs per second (2 charges each, {seconds:g} s per figure)")
        rates = pair_rates(__file__, _backend, where, seconds,
                           [("memory", 1), ("sqlite", 1), ("postgres", 1), ("postgres+slices", 1),
                            ("postgres:threads", 1), ("postgres:threads+slices", 1),
                            ("sqlite", 8), ("postgres", 8), ("postgres+slices", 8)],
                           ("memory", "sqlite", "postgres", "postgres+slices"), (17, 10),
                           lambda kind: "one shared budget")
        results["pairs_per_second"] = {k: round(v) for k, v in rates.items()}
        results["ratios"] = {
            "postgres/sqlite 1 process": round(rates["1proc/postgres/1tasks"] / rates["1proc/sqlite/1tasks"], 2),
            "postgres/sqlite 4 processes": round(rates["4proc/postgres"] / rates["4proc/sqlite"], 2),
            "postgres 4 processes / 1 process": round(rates["4proc/postgres"] / rates["1proc/postgres/1tasks"], 2),
            "postgres+slices/memory 1 process": round(rates["1proc/postgres+slices/1tasks"]
                                                      / rates["1proc/memory/1tasks"], 3),
            "postgres+slices/memory 4 processes": round(rates["4proc/postgres+slices"]
                                                        / rates["4proc/memory"], 3),
            "postgres slices/per-request 1 process": round(rates["1proc/postgres+slices/1tasks"]
                                                           / rates["1proc/postgres/1tasks"], 1),
            "postgres slices/per-request 4 processes": round(rates["4proc/postgres+slices"]
                                                             / rates["4proc/postgres"], 1),
        }
        print("  ratios: " + ", ".join(f"{k} {v}" for k, v in results["ratios"].items()))

        lat: dict[str, list[float]] = {}
        for kind in ("memory", "sqlite", "postgres", "postgres:threads"):
            lat[kind] = anyio.run(_latency, kind, where(kind), n_latency)
        rows = latency_rows(lat)
        results["latency_per_request"] = rows
        print("budget work per request (reserve + settle + 1 ledger row), one at a time:")
        print_latency(rows, 17)
        results["notes"] = [
            "PostgreSQL 15 on 127.0.0.1 (TCP, scram auth), synchronous_commit=off; SQLite WAL, "
            "synchronous=NORMAL: the same durability class.",
            "postgres = psycopg's asyncio pool; postgres:threads = its blocking pool in worker "
            "threads (what trio uses).",
            "4 processes share one budget (one schema / one file); each process has its own pool. "
            "4 memory processes are 4 separate in-process budgets.",
            "+slices: `slices = true` (leased slices flushed every 0.2 s), in the same run.",
        ]
    return results


if __name__ == "__main__":
    cli(__doc__, main, _backend)
