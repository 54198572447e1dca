"""Median of every target over several full runs of ``run.py`` (this machine is shared: one run
can land on a busy minute). Reads each run's ``report.json``, prints a markdown table.

    python benchmarks/medians.py bench-results/runs/*/report.json bench-results/report.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _fmt(v: float) -> str:
    return f"{v:,.2f}"


def medians(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text()) for p in paths]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for i, run in enumerate(runs):
        for name, result in run["benchmarks"].items():
            for t in (result.get("figures") or {}).get("targets", []):
                row = rows.setdefault((name, t["target"]), {**t, "values": [None] * len(runs)})
                row["values"][i] = t["value"]
    when = ", ".join(r["meta"]["when"] for r in runs)
    lines = [f"Median of {len(runs)} full runs ({when}).", "",
             "| benchmark | target | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
             + " | median | limit | met (median) |",
             "|---|---|" + "---:|" * len(runs) + "---:|---|---|"]
    for (name, label), row in rows.items():
        values = [v for v in row["values"] if v is not None]
        med = statistics.median(values)
        at_least = row.get("at_least", False)
        met = med >= row["limit"] if at_least else med <= row["limit"]
        cells = " | ".join("-" if v is None else _fmt(v) for v in row["values"])
        lines.append(f"| {name} | {label} | {cells} | {_fmt(med)} {row['unit']} | "
                     f"{'>=' if at_least else '<='} {_fmt(row['limit'])} {row['unit']} | "
                     f"{'met' if met else '**MISSED**'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(medians([Path(p) for p in sys.argv[1:]]), end="")
