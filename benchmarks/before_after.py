"""Two trees of the library against plain aiohttp, in fresh processes taking turns.

``python benchmarks/before_after.py BEFORE_PYTHON AFTER_PYTHON [--rounds N] [--quick]``: each
interpreter has one tree installed (with the openai plugin and aiohttp). Each round runs
``bench_realistic``'s measurements once under each interpreter, in turn, against one server:
plain aiohttp and the library in the same process (so every figure has its baseline from
the same moment), then ``get_model`` among 1,000 models, then imports and RSS. Printed: the
medians over the rounds of each figure and of its ratio to plain aiohttp, with the load
average at the start and end. The machine this was written on is shared and noisy: read the
ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import asyncio, json, sys
sys.path.insert(0, HERE)
import bench_realistic as br
br.CLIENTS = {k: v for k, v in br.CLIENTS.items() if k in ("plain aiohttp", "squirrel")}
quick = QUICK
n_seq, n_stream, n_conc, rounds, n_sel, n_imp = (
    (30, 3, 256, 1, 50, 1) if quick else (1500, 60, 2000, 3, 2000, 3))
with br.Server() as server:
    clients = asyncio.run(br._measure(server.base_url, n_seq, n_stream, n_conc, rounds))
out = {"clients": clients, "selection_1000": br._selection(n_sel), "imports": br._imports(n_imp)}
print("RESULT " + json.dumps(out))
"""


def _run(python: str, quick: bool) -> dict[str, Any]:
    code = _CHILD.replace("HERE", repr(str(HERE))).replace("QUICK", repr(quick))
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                          cwd="/")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[7:])  # type: ignore[no-any-return]


def _figures(r: dict[str, Any]) -> dict[str, float]:
    plain, sq = r["clients"]["plain aiohttp"], r["clients"]["squirrel"]
    imp = r["imports"]
    return {
        "added p50 per request, paired (us)": sq["added_p50_paired_us"],
        "p50 plain aiohttp (us)": plain["p50_us"],
        "client CPU per request, sequential (us)": sq["cpu_us_per_req_seq"],
        "  plain aiohttp (us)": plain["cpu_us_per_req_seq"],
        "  / plain aiohttp (x)": sq["cpu_us_per_req_seq"] / plain["cpu_us_per_req_seq"],
        "client CPU per request at 64 (us)": sq["cpu_us_per_req_64"],
        "  plain aiohttp at 64 (us)": plain["cpu_us_per_req_64"],
        "throughput at 64 / plain aiohttp (x)": sq["rps_64"] / plain["rps_64"],
        "  plain aiohttp req/s": plain["rps_64"],
        "stream whole p50 (us)": sq["stream_p50_us"],
        "  plain aiohttp (us) ": plain["stream_p50_us"],
        "  / plain aiohttp (x) ": sq["stream_p50_us"] / plain["stream_p50_us"],
        "get_model among 1,000 p50 (us)": r["selection_1000"]["p50_us"],
        "get_model among 1,000 p99 (us)": r["selection_1000"]["p99_us"],
        "import API + openai plugin (ms)": imp["API + openai plugin"]["import_ms"],
        "  import aiohttp (ms)": imp["import aiohttp"]["import_ms"],
        "RSS after API + openai plugin (MB)": imp["API + openai plugin"]["rss_mb"],
        "  RSS after import aiohttp (MB)": imp["import aiohttp"]["rss_mb"],
        "RSS after ModelManager(config) (MB)": imp["... + ModelManager(config)"]["rss_mb"],
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    before, after = args[:2]
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    quick = "--quick" in sys.argv
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for i in range(rounds):
        for name, python in (("before", before), ("after", after)):
            figures = _figures(_run(python, quick))
            runs[name].append(figures)
            print(f"round {i + 1} {name}: " + ", ".join(f"{k.strip()} {v:.2f}" for k, v in figures.items()),
                  file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(f"load average (1 min) at start {load[0]:.1f}, at end {load[1]:.1f}; {rounds} rounds")
    print(f"{'figure (median of rounds)':<44}{'before':>12}{'after':>12}")
    for key in runs["before"][0]:
        b = statistics.median(r[key] for r in runs["before"])
        a = statistics.median(r[key] for r in runs["after"])
        print(f"{key:<44}{b:>12.2f}{a:>12.2f}")
    print("RAW " + json.dumps({**runs, "load": load}))


if __name__ == "__main__":
    main()
