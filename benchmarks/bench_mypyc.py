"""The request path compiled with mypyc, against the same tree in pure Python (issue 16).

``python benchmarks/bench_mypyc.py [--quick] [--turns N]``: copies this tree's core and openai
plugin sources into a temporary folder, makes there the few edits mypyc needs (each below, with
what mypyc said without it), compiles with mypyc the request-path modules it accepts, then runs,
in fresh processes taking turns (pure, compiled, pure, compiled, ...), two measurements:
``bench_realistic``'s clients (5 rounds of 3,000 requests at 64 concurrent against its
server, plain aiohttp first in the same process, medians) and
``library_alone``'s (the HTTP call answered in-process). Printed: each turn's CPU per request
and throughput as ratios to plain aiohttp measured in the same process, the library alone's
CPU per request, RSS after importing the API and the plugin, and the load average. Nothing
is written into the repository; the compiled copy is deleted at the end.

Needs mypy (mypyc ships in it), setuptools, a C compiler and the interpreter's headers; without
mypyc the benchmark is skipped (``ImportError``). ``--quick`` copies and edits the sources
(so the edits cannot rot) and compiles nothing: building takes about a minute and a half of CPU.
docs/performance.md ("Ninth pass: the request path compiled with mypyc") has the figures,
what mypyc refused and what a compiled core would cost the project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mypyc  # noqa: F401  (only whether it is there: a missing compiler skips the benchmark)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Compiled: the request path's modules that mypyc accepts with the edits below.
CORE_MODULES = ("manager", "managerbase", "assembly", "attempts", "attempt", "deadline", "types",
                "upstream", "fastjson", "messages", "fieldchecks")
OPENAI_MODULES = ("provider", "_errors")

#: On the request path (cProfile of ``bench_realistic``'s clients) but left in pure Python.
LEFT_PURE = {
    "selection, stats, limiter, tokens, fallback, decision, scoring, request, responses, cards, "
    "budget, ratelimit, spread, openai_format, builtins.memory_budget":
        "attrs classes with `attrs.field(...)` in their bodies: the compiled module fails at "
        "import (`TypeError: str object expected; got attr._make._CountingAttr`; mypyc does not "
        "support attrs' `field`, python/mypy#15267)",
    "metrics": "`vars(self)` over the instruments: a native instance has no `__dict__`",
    "trusted": "not tried: it generates `__init__`s with `exec` at import for the attrs classes "
               "above, which stay in Python",
    "squirrel_models_openai._answer": "msgspec `Struct`s defined inside a function: 'Nested "
                                      "class definitions not supported'",
    "squirrel_models_openai._http": "async generators (streams) and Protocols; the engine is "
                                    "aiohttp's own cost",
}


def _dedent_type_checking_block(s: str) -> str:
    """managerbase: mypyc refuses an ``if TYPE_CHECKING:`` block in a class body ('Unsupported
    statement in class body'); the attributes are declared in the body itself."""
    head, block = s.split("    if TYPE_CHECKING:\n", 1)
    lines = block.split("\n")
    out = []
    for i, line in enumerate(lines):
        if line and not line.startswith("        "):
            rest = "\n".join(lines[i:])
            break
        out.append(line[4:])
    else:
        rest = ""
    body = "\n".join(out).replace(
        "def _provider_of(self, card: ModelCard) -> Provider: ...",
        "def _provider_of(self, card: ModelCard) -> Provider:\n        raise NotImplementedError")
    return head + body + ("\n" + rest if rest else "")


def _edit_manager(src: Path) -> None:
    d = src / "squirrel_models"
    (d / "managerbase.py").write_text(_dedent_type_checking_block(
        (d / "managerbase.py").read_text()))
    # Native classes have one base (traits aside): Assembly and Attempts in a line.
    a = (d / "assembly.py").read_text()
    _check(a, "class Assembly(ManagerBase):", "\nimport attrs\n")
    a = a.replace("class Assembly(ManagerBase):", "class Assembly(Attempts):")
    (d / "assembly.py").write_text(
        a.replace("\nimport attrs\n", "\nimport attrs\n\nfrom .attempts import Attempts\n", 1))
    m = (d / "manager.py").read_text()
    _check(m, "class ModelManager(Assembly, Attempts):", "    @guarded\n    def __init__(\n",
           "from contextlib import asynccontextmanager\n", "from .secrets import RedactingFilter, guarded\n")
    m = m.replace("class ModelManager(Assembly, Attempts):", "class ModelManager(Assembly):")
    # @guarded on a native __init__: the generated C calls __init__ without its arguments.
    m = m.replace("    @guarded\n    def __init__(\n", "    def __init__(\n", 1)
    init_end = m.index(") -> None:\n", m.index("    def __init__(\n")) + len(") -> None:\n")
    m = (m[:init_end] + "        try:\n            self._init(config, plugins=plugins, "
         "budget_backend=budget_backend, meter_provider=meter_provider, "
         "tracer_provider=tracer_provider)\n        except SquirrelError as exc:\n"
         "            sanitize(exc)\n            raise\n\n    def _init(\n        self,\n"
         "        config: Config | Mapping[str, Any] | None = None,\n        *,\n"
         "        plugins: PluginManager | None = None,\n"
         "        budget_backend: BudgetBackend | None = None,\n"
         "        meter_provider: MeterProvider | None = None,\n"
         "        tracer_provider: TracerProvider | None = None,\n    ) -> None:\n" + m[init_end:])
    m = m.replace("from .secrets import RedactingFilter, guarded\n",
                  "from .secrets import RedactingFilter, guarded, sanitize\n")
    m = m.replace("from contextlib import asynccontextmanager\n",
                  "from contextlib import AbstractAsyncContextManager, asynccontextmanager\n")
    m, moved = _move_stream_of_manager(m)
    (d / "manager.py").write_text(m)
    (d / "managerstream.py").write_text(moved)
    # An attribute `_inline` becomes the C struct field `__inline`, a GCC keyword.
    for name in ("attempts.py", "manager.py", "managerbase.py", "limiter.py", "managerstream.py"):
        p = d / name
        p.write_text(re.sub(r"\b_inline\b", "_inline_store", p.read_text()))


def _move_stream_of_manager(m: str) -> tuple[str, str]:
    start = "    @asynccontextmanager\n    async def stream("
    _check(m, start)
    method = m[m.index(start):]
    m = m[:m.index(start)] + (
        "    def stream(self, request: AIRequest, requirements: ModelRequirements | None = None,\n"
        "               *, timeout: float | None = None) -> AbstractAsyncContextManager[ResponseStream]:\n"
        '        """Stream the answer (moved out: see managerstream)."""\n'
        "        from .managerstream import stream\n"
        "        return stream(self, request, requirements, timeout=timeout)\n")
    header = m[:m.index("\nclass ModelManager")]
    body = "\n".join(line[4:] if line.startswith("    ") else line for line in method.split("\n"))
    body = body.replace("async def stream(self,", "async def stream(self: ModelManager,", 1)
    return m, ('"""ModelManager.stream, moved out of the compiled manager."""\n'
               + header.split('"""', 2)[2] + "\nfrom .manager import ModelManager\n\n\n" + body)


def _edit_provider(src: Path) -> None:
    p = src / "squirrel_models_openai" / "provider.py"
    s = p.read_text()
    start = "    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:"
    _check(s, start, "\ndef _choice(")
    i, j = s.index(start), s.index("\ndef _choice(")
    method = s[i:j]
    s = s[:i] + (
        "    def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:\n"
        '        """Stream one answer (moved out: see _stream)."""\n'
        "        from ._stream import stream\n"
        "        return stream(self, model, request)\n\n") + s[j:]
    p.write_text(s)
    header = s[:s.index("\nclass OpenAIProvider")]
    header = header[:header.index("\nlog = ")] if "\nlog = " in header else header
    body = "\n".join(line[4:] if line.startswith("    ") else line for line in method.split("\n"))
    body = body.replace("async def stream(self,", "async def stream(self: OpenAIProvider,", 1)
    p.with_name("_stream.py").write_text(
        '"""OpenAIProvider.stream, moved out of the compiled provider."""\n'
        + header.split('"""', 2)[2]
        + "\nfrom .provider import OpenAIProvider, _drain, _filtered, _StreamState\n\n\n" + body)


def _check(text: str, *needles: str) -> None:
    for n in needles:
        if n not in text:
            raise RuntimeError(f"the source changed: {n.strip()!r} not found; update bench_mypyc's edits")


def copy_and_edit(dest: Path) -> dict[str, Path]:
    """This tree's core and openai sources in ``dest``, edited for mypyc."""
    core = dest / "core" / "src"
    openai = dest / "openai" / "src"
    shutil.copytree(ROOT / "core" / "src", core, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "plugins" / "openai" / "src", openai,
                    ignore=shutil.ignore_patterns("__pycache__"))
    _edit_manager(core)
    _edit_provider(openai)
    return {"core": core, "openai": openai}


def compile_tree(srcs: dict[str, Path], log: Callable[[str], None] = print) -> float:
    """mypyc over the request path, in place; returns the seconds it took."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{srcs['core']}:{srcs['openai']}"}
    for key, package, modules in (("core", "squirrel_models", CORE_MODULES),
                                  ("openai", "squirrel_models_openai", OPENAI_MODULES)):
        files = [f"{package}/{m}.py" for m in modules]
        # --ignore-missing-imports: what the environment lacks (trio) is typed Any, as mypy says
        proc = subprocess.run([sys.executable, "-m", "mypyc", "--strict", "--ignore-missing-imports", *files],
                              cwd=srcs[key], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"mypyc failed on {key}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        log(f"compiled {key}: {', '.join(modules)}")
    return time.perf_counter() - t0


_CHILD = r"""
import asyncio, json, os, statistics, sys, time
sys.path.insert(0, HERE)
import bench_realistic as br
import library_alone as la
NAMES = ("plain aiohttp", "squirrel", "squirrel, from an OpenAI body", "openai provider alone")
N, R = NR

async def clients(base):
    opened = {n: await br.CLIENTS[n][0](base) for n in NAMES}
    async def burst(call, n):
        q = iter(range(n))
        async def w():
            for _ in q:
                await call(False)
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(w() for _ in range(64)))
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    for call, _ in opened.values():
        for _ in range(20):
            await call(False)
        await burst(call, 256)
    res = {n: [] for n in NAMES}
    for _ in range(R):
        for n, (call, _) in opened.items():
            res[n].append(await burst(call, N))
    for _, close in opened.values():
        await close()
    return {n: {"rps": statistics.median(r for r, _ in v), "cpu_us": statistics.median(c for _, c in v)}
            for n, v in res.items()}

with br.Server() as server:
    out = {"clients": asyncio.run(clients(server.base_url))}
alone = asyncio.run(la._run(N, 64, R, None))
out["library_alone_us"] = alone["library_us"] - alone["baseline_us"]
out["rss_mb"] = br._imports(1)["API + openai plugin"]["rss_mb"]
import squirrel_models.manager as m
out["compiled"] = not m.__file__.endswith(".py")
out["load"] = os.getloadavg()[0]
print("RESULT " + json.dumps(out))
"""


def _turn(srcs: dict[str, Path], n: int, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{srcs['core']}:{srcs['openai']}"}
    code = _CHILD.replace("HERE", repr(str(HERE))).replace("NR", f"{n}, {rounds}")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def _figures(r: dict[str, Any]) -> dict[str, float]:
    c = r["clients"]
    plain = c["plain aiohttp"]
    return {
        "throughput / plain": c["squirrel"]["rps"] / plain["rps"],
        "CPU: plain / squirrel": plain["cpu_us"] / c["squirrel"]["cpu_us"],
        "from an OpenAI body, CPU: plain / squirrel": plain["cpu_us"] / c["squirrel, from an OpenAI body"]["cpu_us"],
        "squirrel CPU us": c["squirrel"]["cpu_us"],
        "plain aiohttp CPU us": plain["cpu_us"],
        "provider alone CPU us": c["openai provider alone"]["cpu_us"],
        "library alone us": r["library_alone_us"],
        "RSS after import MB": r["rss_mb"],
        "load": r["load"],
    }


def main(quick: bool = False, turns: int = 2) -> dict[str, Any]:
    """Build the compiled copy (not in quick mode) and measure both trees in turn."""
    with tempfile.TemporaryDirectory(prefix="squirrel-mypyc-") as tmp:
        srcs = copy_and_edit(Path(tmp))
        pure = {"core": ROOT / "core" / "src", "openai": ROOT / "plugins" / "openai" / "src"}
        notes = [f"left in pure Python: {k}: {v}" for k, v in LEFT_PURE.items()]
        if quick:
            return {"title": "mypyc: the request path compiled (quick: sources edited, not built)",
                    "table": [{"module": m, "compiled": "edited, not built"} for m in CORE_MODULES],
                    "targets": [], "notes": notes}
        build_s = compile_tree(srcs)
        runs: dict[str, list[dict[str, float]]] = {"pure": [], "compiled": []}
        for _ in range(turns):
            for name, tree in (("pure", pure), ("compiled", srcs)):
                r = _turn(tree, 3000, 5)
                if r["compiled"] != (name == "compiled"):
                    raise RuntimeError(f"the {name} turn imported the wrong tree")
                runs[name].append(_figures(r))
                print(name, json.dumps({k: round(v, 3) for k, v in runs[name][-1].items()}))
    table = []
    for key in runs["pure"][0]:
        row: dict[str, Any] = {"figure": key}
        for name, rs in runs.items():
            vals = [r[key] for r in rs]
            row[name] = f"{statistics.median(vals):.2f} ({', '.join(f'{v:.2f}' for v in vals)})"
        table.append(row)
    out = {"title": "mypyc: the request path compiled, against pure Python (medians; each turn in brackets)",
           "table": table, "targets": [], "build_seconds": round(build_s, 1), "notes": notes}
    for row in table:
        print(f"{row['figure']:45s} pure {row['pure']:32s} compiled {row['compiled']}")
    print(f"build: {build_s:.0f} s")
    return out


if __name__ == "__main__":
    argv = sys.argv[1:]
    main(quick="--quick" in argv,
         turns=int(argv[argv.index("--turns") + 1]) if "--turns" in argv else 2)
