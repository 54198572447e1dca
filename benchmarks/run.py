"""Run every benchmark in this folder and write ``bench-results/report.md`` and ``.json``.

Each ``bench_*.py`` module exposes ``main(quick: bool) -> dict`` returning its figures. A
module may also expose ``report(figures, quick) -> dict`` that shapes those figures for the
report (``title``, tables, ``targets``, ``notes``) when ``main``'s own return value is kept
simple for its callers. A module whose dependencies are missing (an ``ImportError`` on import)
is skipped with a note; one that fails while running is reported as failed and the rest still
run. ``--strict`` makes a skipped benchmark fail the run too (the bench session installs
everything, so a skip there is a broken environment, not a choice).

    python benchmarks/run.py            # full run (minutes)
    python benchmarks/run.py --quick    # each benchmark once: a smoke test
    python benchmarks/run.py --only selection,manager
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = ROOT / "bench-results"


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def run_one(name: str, quick: bool) -> dict[str, Any]:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return {"status": "skipped", "reason": f"missing dependency: {exc}"}
    t0 = time.perf_counter()
    try:
        figures = module.main(quick=quick)
        if hasattr(module, "report"):
            figures = module.report(figures, quick)
    except Exception as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(), "seconds": round(time.perf_counter() - t0, 1)}
    return {"status": "ok", "seconds": round(time.perf_counter() - t0, 1), "figures": figures}


# --- markdown ---------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out.extend("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows)
    return out


def _limit(t: dict[str, Any]) -> str:
    return f"{'>=' if t.get('at_least') else '<='} {_fmt(t['limit'])} {t['unit']}"


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| target | value | limit | met |", "|---|---|---|---|"]
    for t in rows:
        met = {True: "**met**", False: "**MISSED**", None: "(quick run: not judged)"}[t["met"]]
        out.append(f"| {t['target']} | {_fmt(t['value'])} {t['unit']} | {_limit(t)} | {met} |")
    return out


def render_figures(figures: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, value in figures.items():
        if key in ("title", "notes", "targets"):
            continue
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            lines += ["", *_table(value)]
        elif isinstance(value, dict):
            lines += ["", f"**{key}**", "", *_table([value])]
        else:
            lines += ["", f"- {key}: {_fmt(value)}"]
    if figures.get("targets"):
        lines += ["", "Targets:", "", *_targets(figures["targets"])]
    if figures.get("notes"):
        lines += [""] + [f"- {n}" for n in figures["notes"]]
    return lines


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# Benchmark report",
        "",
        f"{meta['when']} · Python {meta['python']} · {meta['machine']} · "
        f"{'quick (smoke) run' if meta['quick'] else 'full run'} · reproduce: `./nox -s bench`",
        "",
        "Figures are ratios against baselines measured in the same run (the machine is shared "
        "and noisy); absolute times are for context.",
    ]
    for name, result in report["benchmarks"].items():
        title = (result.get("figures") or {}).get("title", name)
        lines += ["", f"## {title}", "", f"`{name}` · {result['status']}"
                  + (f" in {result['seconds']} s" if "seconds" in result else "")]
        if result["status"] == "ok":
            lines += render_figures(result["figures"])
        else:
            lines += ["", f"- {result['reason']}"]
    summary = [(name, t) for name, r in report["benchmarks"].items() if r["status"] == "ok"
               for t in r["figures"].get("targets", [])]
    not_run = [(name, r) for name, r in report["benchmarks"].items() if r["status"] != "ok"]
    if summary or not_run:
        lines += ["", "## All targets", "", "| benchmark | target | value | limit | met |",
                  "|---|---|---|---|---|"]
        for name, r in not_run:
            lines.append(f"| {name} | (not run: {r['status']}) | | | **{r['status'].upper()}** |")
        for name, t in summary:
            met = {True: "met", False: "**MISSED**", None: "-"}[t["met"]]
            lines.append(f"| {name} | {t['target']} | {_fmt(t['value'])} {t['unit']} | {_limit(t)} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="run each benchmark once (smoke)")
    ap.add_argument("--only", default="", help="comma-separated names (selection,manager,...)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--strict", action="store_true", help="a skipped benchmark fails the run")
    args = ap.parse_args(argv)
    names = discover()
    if args.only:
        wanted = {f"bench_{n.strip().removeprefix('bench_')}" for n in args.only.split(",")}
        names = [n for n in names if n in wanted]
    report: dict[str, Any] = {
        "meta": {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                 "python": platform.python_version(), "machine": platform.platform(),
                 "quick": args.quick},
        "benchmarks": {},
    }
    for name in names:
        print(f"running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        report["benchmarks"][name] = run_one(name, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    text = render(report)
    (args.out / "report.md").write_text(text)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(text)
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}", file=sys.stderr)
    bad = ("failed", "skipped") if args.strict else ("failed",)
    failed = [n for n, r in report["benchmarks"].items() if r["status"] in bad]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
