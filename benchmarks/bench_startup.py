"""Start-up: import time, ``ModelManager`` creation and memory, each in fresh subprocesses.

Baseline: ``python -c pass`` in the same run. Wall times are medians of several runs; the
in-process figures (``time.perf_counter`` around the import) come from the same runs. Memory
is RSS from ``/proc`` (VmRSS now, VmHWM peak). ``ModelManager()`` loads the entry points of
whatever plugins are installed in this environment.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from typing import Any

from _common import ratio, target

TARGET_IMPORT_MS = 150.0
TARGET_RSS_MB = 40.0

_PROBE = r"""
import json, time
def rss():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    return out
r = {"start": rss()}
t0 = time.perf_counter()
MODE
print(json.dumps(r))
"""

MODES = {
    "pass": "pass",
    "import": ("import squirrel_models\n"
               "r['import_ms'] = (time.perf_counter() - t0) * 1e3\nr['after'] = rss()"),
    "import_api": ("from squirrel_models import ModelManager, AIRequest, ModelRequirements\n"
                   "r['import_ms'] = (time.perf_counter() - t0) * 1e3\nr['after'] = rss()"),
    "manager": ("from squirrel_models import ModelManager\n"
                "r['import_ms'] = (time.perf_counter() - t0) * 1e3\n"
                "t1 = time.perf_counter()\nmm = ModelManager()\n"
                "r['create_ms'] = (time.perf_counter() - t1) * 1e3\nr['after'] = rss()"),
    "models10k": ("""
from decimal import Decimal
from squirrel_models import ModelManager, ModelCard, Price, ModelRequirements
from squirrel_models.testing import ScriptedProvider
mm = ModelManager()
p = ScriptedProvider("p")
before = rss()
cards = [ModelCard.for_provider("p", f"m{i:05d}", provider_type="scripted",
                                features={"streaming"}, price=Price(Decimal(i % 50), Decimal(1)),
                                quality=(i % 10) / 10, tags={"t%d" % (i % 20)})
         for i in range(COUNT)]
t1 = time.perf_counter()
for c in cards:
    mm.register_model(c, p)
r['register_ms'] = (time.perf_counter() - t1) * 1e3
t1 = time.perf_counter()
d = mm.rank(ModelRequirements())
r['first_rank_ms'] = (time.perf_counter() - t1) * 1e3
r['candidates'] = len(d.candidates)
r['before'] = before
r['after'] = rss()
"""),
}


#: Where the subprocesses keep their bytecode (set by ``main``). An installed application has
#: its ``.pyc`` files (pip compiles at install), but uv-made environments, like the nox
#: sessions', have none, and with ``PYTHONDONTWRITEBYTECODE`` set (as on this machine) every
#: process would compile every module again: 50-60 ms of the API import is that, not the
#: import. A private cache prefix, filled by a warm-up run, measures the installed case
#: without writing into the environment or the source tree.
_PYCACHE: str | None = None


def _run(mode: str, n: int, count: int = 10_000, load: str | None = None) -> list[dict[str, Any]]:
    """``load``: the value of ``SQUIRREL_LOAD_PLUGINS`` (None: unset, every plugin loads)."""
    code = _PROBE.replace("MODE", MODES[mode]).replace("COUNT", str(count))
    env = dict(os.environ)
    env.pop("SQUIRREL_LOAD_PLUGINS", None)
    env.pop("SQUIRREL_DISABLE_PLUGINS", None)
    if _PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    if load is not None:
        env["SQUIRREL_LOAD_PLUGINS"] = load
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=env)
        wall = (time.perf_counter() - t0) * 1e3
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        data["wall_ms"] = wall
        out.append(data)
    return out


def _med(runs: list[dict[str, Any]], *path: str) -> float:
    vals = []
    for r in runs:
        v: Any = r
        for p in path:
            v = v[p]
        vals.append(v)
    return round(statistics.median(vals), 2)


def installed_plugins() -> list[str]:
    """The entry-point plugins installed in this environment, by name."""
    return sorted({ep.name for ep in entry_points(group="squirrel_models")})


def main(quick: bool = False) -> dict[str, Any]:
    global _PYCACHE
    with tempfile.TemporaryDirectory(prefix="squirrel-pycache-") as cache:
        _PYCACHE = cache
        try:
            for m in ("manager", "models10k"):  # warm-up: fill the bytecode cache
                _run(m, 1, 200)
            return _main(quick)
        finally:
            _PYCACHE = None


def _main(quick: bool) -> dict[str, Any]:
    n = 1 if quick else 9
    plugins = installed_plugins()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("pass", "import", "import_api",
                                                             "manager")}
    # ModelManager() with no entry point loaded, then with each plugin alone: what each costs.
    alone: dict[str, list[dict[str, Any]]] = {name: [] for name in ["", *plugins]}
    for _ in range(n):  # interleave the modes so noise hits each alike
        for m in runs:
            runs[m].extend(_run(m, 1))
        for name in alone:
            alone[name].extend(_run("manager", 1, load=name))
    big = _run("models10k", 1 if quick else 3, 200 if quick else 10_000)
    base_wall = _med(runs["pass"], "wall_ms")
    base_rss = _med(runs["pass"], "start", "VmRSS")
    table = []
    for m, label in (("import", "import squirrel_models"),
                     ("import_api", "from squirrel_models import ModelManager, ..."),
                     ("manager", "... + ModelManager()")):
        wall = _med(runs[m], "wall_ms")
        row = {"what": label, "in_process_ms": _med(runs[m], "import_ms"),
               "process_wall_ms": wall, "python_pass_wall_ms": base_wall,
               "added_wall_ms": round(wall - base_wall, 2), "ratio_wall": ratio(wall, base_wall),
               "rss_mb": _med(runs[m], "after", "VmRSS"),
               "added_rss_mb": round(_med(runs[m], "after", "VmRSS") - base_rss, 2)}
        if m == "manager":
            row["create_ms"] = _med(runs[m], "create_ms")
        table.append(row)
    models10k = {
        "models": big[0]["candidates"],
        "register_10k_ms": _med(big, "register_ms"),
        "first_rank_ms": _med(big, "first_rank_ms"),
        "candidates": big[0]["candidates"],
        "rss_before_mb": _med(big, "before", "VmRSS"),
        "rss_after_mb": _med(big, "after", "VmRSS"),
        "peak_rss_mb": _med(big, "after", "VmHWM"),
        "added_peak_mb": round(_med(big, "after", "VmHWM") - _med(big, "before", "VmRSS"), 2),
    }
    none = alone[""]
    per_plugin = []
    for name, rs in alone.items():
        per_plugin.append({
            "plugins loaded": name or "(none: built-ins only)",
            "create_ms": _med(rs, "create_ms"),
            "added_create_ms": round(_med(rs, "create_ms") - _med(none, "create_ms"), 2),
            "rss_mb": _med(rs, "after", "VmRSS"),
            "added_rss_mb": round(_med(rs, "after", "VmRSS") - _med(none, "after", "VmRSS"), 2)})
    per_plugin.append({"plugins loaded": "all installed (" + ", ".join(plugins) + ")",
                       "create_ms": table[2]["create_ms"],
                       "added_create_ms": round(table[2]["create_ms"] - _med(none, "create_ms"), 2),
                       "rss_mb": table[2]["rss_mb"],
                       "added_rss_mb": round(table[2]["rss_mb"] - _med(none, "after", "VmRSS"), 2)})
    targets = [
        target("import squirrel_models (added process wall time)", table[0]["added_wall_ms"],
               TARGET_IMPORT_MS, "ms", quick=quick),
        target("import of the API names (added process wall time)", table[1]["added_wall_ms"],
               TARGET_IMPORT_MS, "ms", quick=quick),
        target("RSS after importing the API and creating a ModelManager", table[2]["rss_mb"],
               TARGET_RSS_MB, "MB", quick=quick),
        target("RSS after importing the API (before ModelManager())", table[1]["rss_mb"],
               TARGET_RSS_MB, "MB", quick=quick),
    ]
    return {
        "title": "Start-up and memory",
        "table": table,
        "installed_plugins": ", ".join(plugins) or "(none)",
        "per_plugin": per_plugin,
        "models_10k": models10k,
        "targets": targets,
        "notes": [
            f"medians of {n} fresh subprocesses per row, interleaved; baseline `python -c pass` "
            f"({base_wall} ms wall, {base_rss} MB RSS).",
            "bytecode: the subprocesses read .pyc files from a private PYTHONPYCACHEPREFIX filled by a "
            "warm-up run (an installed application has its .pyc files; uv environments are made without "
            "them, and this machine sets PYTHONDONTWRITEBYTECODE).",
            "`import squirrel_models` alone is lazy (names load on first use); the second row "
            "is what an application pays. `ModelManager()` loads every installed plugin's entry point.",
            "per plugin: `ModelManager()` in fresh subprocesses with SQUIRREL_LOAD_PLUGINS naming one "
            "plugin (empty: none), interleaved with the rows above; added = over built-ins only.",
            f"{big[0]['candidates']:,} models: registered one by one with "
            "ModelManager.register_model, then one rank; peak is VmHWM.",
        ],
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
