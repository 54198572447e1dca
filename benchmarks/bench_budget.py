"""Budget backends: reserve + settle pairs per second (one process, four processes), SQLite
against in-memory in the same run, and the SQLite ledger's size per million attempts.

Run ``python benchmarks/bench_budget.py`` (``--quick`` for a smoke run). ``main(quick)``
prints the figures and returns them as a dict.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

if str(Path(__file__).resolve().parent) not in sys.path:  # imported by path (the smoke test)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget_common import PROCESSES, cli, four_processes, pairs
from squirrel_models.budget import LedgerRow
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
from squirrel_models.ledger import summarize
from squirrel_models_sqlite_budget import SqliteBudgetBackend, SqliteBudgetOptions


def _backend(kind: str, path: str) -> Any:
    if kind == "memory":
        return MemoryBudgetBackend()
    slices = kind.endswith("+slices")
    kind = kind.removesuffix("+slices")
    mode = kind.split(":", 1)[1] if ":" in kind else "shared"
    return SqliteBudgetBackend(SqliteBudgetOptions(path=path, connections=mode, slices=slices))


def one_process(kind: str, path: str, seconds: float, tasks: int) -> float:
    return anyio.run(pairs, _backend, kind, path, seconds, tasks) / seconds


def _ledger_rows(n: int) -> list[LedgerRow]:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    rows = []
    for i in range(n):
        rid = uuid.uuid4().hex
        rows.append(LedgerRow(
            rid, 1 + i % 2, "openai", f"openai/gpt-4o-mini-{i % 5}", "ok" if i % 10 else "error",
            350 + i % 900, 120 + i % 400, i % 64, 0, Decimal(i % 5000) / 10**7,
            None if i % 10 else "ServerError", 0.4 + (i % 100) / 100,
            ("global", f"key:team-{i % 20}"), t0 + timedelta(seconds=i)))
    return rows


async def _ledger(path: str, n: int) -> dict[str, float]:
    backend = SqliteBudgetBackend(SqliteBudgetOptions(path=path))
    rows = _ledger_rows(n)
    t = time.perf_counter()
    for i in range(0, n, 1000):
        await backend.record(rows[i:i + 1000])
    insert_s = time.perf_counter() - t
    t = time.perf_counter()
    back = await backend.rows()
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    summarize(back, "model")
    summarize_s = time.perf_counter() - t
    await backend.aclose()  # checkpoints the WAL into the file
    per_m = 1_000_000 / n
    return {"rows": n, "insert_rows_per_s": n / insert_s, "read_s_per_million": read_s * per_m,
            "summarize_s_per_million": summarize_s * per_m}


def ledger(path: str, n: int) -> dict[str, float]:
    """Write ``n`` ledger rows, read and summarize them; size and times per million rows."""
    out = anyio.run(_ledger, path, n)
    size = sum(os.path.getsize(path + s) for s in ("", "-wal", "-shm") if os.path.exists(path + s))
    out.update(bytes_per_row=size / n, mb_per_million=size * 1_000_000 / n / 1e6)
    return out


def main(quick: bool = False) -> dict[str, Any]:
    seconds = 0.3 if quick else 3.0
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def fresh(name: str) -> str:
            return str(Path(tmp) / f"{name}-{uuid.uuid4().hex[:6]}.sqlite3")

        print(f"reserve + settle pairs per second (2 charges each, {seconds:g} s per figure)")
        for kind, tasks in [("memory", 1), ("sqlite", 1), ("sqlite+slices", 1), ("memory", 8),
                            ("sqlite", 8), ("sqlite+slices", 8), ("sqlite:per_thread", 1),
                            ("sqlite:per_thread", 8)]:
            rate = one_process(kind, fresh(kind.replace(":", "-")), seconds, tasks)
            results[f"1proc/{kind}/{tasks}tasks"] = rate
            print(f"  1 process,  {tasks} task(s), {kind:<18} {rate:>10,.0f} /s")
        for kind in ("memory", "sqlite", "sqlite+slices"):
            # start 1.5 s from now: after every worker has imported and opened the file
            rate = four_processes(__file__, kind, fresh(kind), seconds, lead_s=1.5)
            results[f"4proc/{kind}"] = rate
            note = " (4 separate in-process budgets)" if kind == "memory" else " (one shared file)"
            print(f"  {PROCESSES} processes, 1 task each, {kind:<11} {rate:>10,.0f} /s{note}")
        r1, r4 = results["1proc/sqlite/1tasks"], results["4proc/sqlite"]
        print(f"  ratios: sqlite/memory 1 process {r1 / results['1proc/memory/1tasks']:.3f}, "
              f"4 processes {r4 / results['4proc/memory']:.3f}; sqlite 4 processes / 1 process "
              f"{r4 / r1:.2f}; shared / per_thread connection (8 tasks) "
              f"{results['1proc/sqlite/8tasks'] / results['1proc/sqlite:per_thread/8tasks']:.2f}")
        print(f"  target >= 2,000 pairs/s in one process: {'met' if r1 >= 2000 else 'NOT met'}")
        s1, s4 = results["1proc/sqlite+slices/1tasks"], results["4proc/sqlite+slices"]
        print(f"  with slices: sqlite/memory 1 process {s1 / results['1proc/memory/1tasks']:.3f}, "
              f"4 processes {s4 / results['4proc/memory']:.3f}; slices / per-request "
              f"{s1 / r1:.1f}x (1 process), {s4 / r4:.1f}x (4 processes)")

        n = 2_000 if quick else 50_000
        ledger_figures = ledger(fresh("ledger"), n)
        results["ledger"] = ledger_figures
        print(f"ledger: {n:,} rows written, extrapolated to a million attempts:")
        print(f"  {ledger_figures['bytes_per_row']:.0f} bytes per row, {ledger_figures['mb_per_million']:.0f} MB per "
              f"million attempts; insert {ledger_figures['insert_rows_per_s']:,.0f} rows/s (batches of 1000)")
        print(f"  `squirrel usage` over a million rows: read {ledger_figures['read_s_per_million']:.1f} s + "
              f"summarize {ledger_figures['summarize_s_per_million']:.1f} s")
    return results


def report(results: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The figures shaped for benchmarks/run.py's report: each backend beside in-memory."""
    from _common import ratio, target

    table = []
    for key, rate in results.items():
        if key == "ledger":
            continue
        procs, kind, *rest = key.split("/")
        n_procs = int(procs.removesuffix("proc"))
        tasks = int(rest[0].removesuffix("tasks")) if rest else 1
        memory = results[f"{procs}/memory/{rest[0]}" if rest else f"{procs}/memory"]
        table.append({"backend": kind, "processes": n_procs, "tasks_per_process": tasks,
                      "pairs_per_s": round(rate), "vs_memory": ratio(rate, memory),
                      "us_per_pair": round(1e6 / rate * n_procs, 1) if rate else float("nan")})
    return {
        "title": "Budgets: reserve + settle pairs per second, in-memory and SQLite (with and without slices)",
        "table": table,
        "ledger": {k: round(v, 1) for k, v in results["ledger"].items()},
        "targets": [target("SQLite pairs/s, one process, one task", results["1proc/sqlite/1tasks"],
                           2000, "/s", quick=quick, at_least=True),
                    target("SQLite with slices / memory, one process, one task",
                           ratio(results["1proc/sqlite+slices/1tasks"], results["1proc/memory/1tasks"]),
                           0.5, "x", quick=quick, at_least=True)],
        "notes": [
            "each pair: reserve then settle against 2 charges (a global day limit and a per-key month "
            "limit); each figure counts the pairs done in a fixed time.",
            "vs_memory: against the in-memory backend with the same processes and tasks, same run. Four "
            "in-memory processes are four separate budgets; four SQLite processes share one file.",
            "us_per_pair: wall time per pair in each process (processes x 1 / rate).",
            "sqlite:per_thread: one connection per worker thread instead of one shared connection.",
            "sqlite+slices: `slices = true` (leased slices of the budget's room, flushed every 0.2 s); "
            "the figure includes the flushes and the final hand-back at close.",
            "ledger: SQLite rows written in batches of 1,000, read back and summarized, per million rows.",
        ],
    }


if __name__ == "__main__":
    cli(__doc__, main, _backend)
