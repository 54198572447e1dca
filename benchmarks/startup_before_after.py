"""Start-up of two trees, interleaved subprocess by subprocess, with ``bench_startup``'s probes.

``python benchmarks/startup_before_after.py BEFORE_PYTHONPATH AFTER_PYTHONPATH [--n N]``:
each argument is the ``PYTHONPATH`` that puts one tree's sources first (``core/src`` and every
``plugins/*/src``, joined with ``:``), run by an interpreter that has the distributions
installed (their entry points are read from it). Each of the ``N`` rounds runs every
``bench_startup`` mode once under each tree, the trees taking turns in alternating order;
both share one private bytecode cache, filled by a warm-up. Printed: per tree, the medians
of the added wall time and of the added CPU time (user + system of the subprocess, less
disturbed than wall time by other work on a shared machine) over ``python -c pass``, RSS,
``ModelManager()``'s creation time, and what each installed plugin alone adds to
``ModelManager()`` over built-ins only; with the load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_startup as bs

MODES = ("pass", "import", "import_api", "manager")


def _run(mode: str, load: str | None = None) -> dict[str, Any]:
    """One ``bench_startup`` probe in a fresh subprocess, with its CPU time (``cpu_ms``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    [record] = bs._run(mode, 1, load=load)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record["cpu_ms"] = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1e3
    return record


def _summary(runs: dict[str, list[dict[str, Any]]], alone: dict[str, list[dict[str, Any]]]
             ) -> dict[str, Any]:
    med = bs._med
    base_wall, base_cpu = med(runs["pass"], "wall_ms"), med(runs["pass"], "cpu_ms")
    out: dict[str, Any] = {"python -c pass": {"wall_ms": base_wall, "cpu_ms": base_cpu,
                                              "rss_mb": med(runs["pass"], "start", "VmRSS")}}
    for mode in MODES[1:]:
        out[mode] = {"added_wall_ms": round(med(runs[mode], "wall_ms") - base_wall, 1),
                     "added_cpu_ms": round(med(runs[mode], "cpu_ms") - base_cpu, 1),
                     "rss_mb": med(runs[mode], "after", "VmRSS")}
    out["manager"]["create_ms"] = med(runs["manager"], "create_ms")
    none = alone[""]
    out["built-ins only"] = {"create_ms": med(none, "create_ms"), "rss_mb": med(none, "after", "VmRSS")}
    out["per plugin (added over built-ins only)"] = {
        name: {"create_ms": round(med(rs, "create_ms") - med(none, "create_ms"), 1),
               "cpu_ms": round(med(rs, "cpu_ms") - med(none, "cpu_ms"), 1),
               "rss_mb": round(med(rs, "after", "VmRSS") - med(none, "after", "VmRSS"), 2)}
        for name, rs in alone.items() if name}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--n", type=int, default=9, help="rounds (default 9)")
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    plugins = bs.installed_plugins()
    runs = {t: {m: [] for m in MODES} for t in trees}
    alone = {t: {name: [] for name in ["", *plugins]} for t in trees}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="squirrel-pycache-") as cache:
        bs._PYCACHE = cache
        for path in trees.values():  # warm-up: fill the bytecode cache of both trees
            os.environ["PYTHONPATH"] = path
            _run("manager")
        for i in range(args.n):
            order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
            for tree, path in order:
                os.environ["PYTHONPATH"] = path
                for mode in MODES:
                    runs[tree][mode].append(_run(mode))
                for name in alone[tree]:
                    alone[tree][name].append(_run("manager", load=name))
    print(json.dumps({"rounds": args.n, "installed_plugins": plugins,
                      "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
                      **{t: _summary(runs[t], alone[t]) for t in trees}}, indent=1))


if __name__ == "__main__":
    main()
