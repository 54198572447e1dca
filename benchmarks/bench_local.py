"""Local model through ModelManager vs llama_cpp.Llama called directly, and the demo's time.

Both paths run the same GGUF file (SmolLM2-135M-Instruct Q4_1 by default;
``$SQUIRREL_BENCH_MODEL`` names another), with one compute thread, the same chat and
``max_tokens``, streaming, interleaved run by run so machine noise hits both alike. Reported:
decoding tokens per second (after the first token) and time to first token (prompt template,
tokenizing, prompt processing, first token), medians, and their ratios. The full run also
times ``demo/demo.py`` end to end in a fresh process (warm: model and wheel cached).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import median  # noqa: E402

MESSAGES = [("system", "You are a helpful assistant."),
            ("user", "Write a short story about a squirrel who keeps a budget.")]
N_CTX = 1024


def _model_path() -> Path:
    if env := os.environ.get("SQUIRREL_BENCH_MODEL"):
        return Path(env)
    from squirrel_models_llama_local import default_model_path

    return default_model_path()


def _direct_run(llm: Any, max_tokens: int) -> tuple[float, float, int]:
    """(ttft seconds, decode tokens/s, tokens) of one streamed chat completion on llama_cpp."""
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    for chunk in llm.create_chat_completion([{"role": r, "content": c} for r, c in MESSAGES],
                                            max_tokens=max_tokens, temperature=0.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            if n == 1:
                first = time.perf_counter()
    end = time.perf_counter()
    return first - t0, (n - 1) / (end - first) if n > 1 and end > first else 0.0, n


async def _manager_run(mm: Any, max_tokens: int) -> tuple[float, float, int]:
    from squirrel_models.types import AIRequest, Message

    req = AIRequest(tuple(Message(r, c) for r, c in MESSAGES),  # type: ignore[arg-type]
                    max_tokens=max_tokens, temperature=0.0)
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    async with mm.stream(req) as s:
        async for chunk in s:
            if chunk.text:
                n += 1
                if n == 1:
                    first = time.perf_counter()
    end = time.perf_counter()
    tokens = s.response.usage.output_tokens if s.response is not None else n
    return first - t0, (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0, tokens


def _demo_wall_time() -> float | None:
    demo = HERE.parent / "demo" / "demo.py"
    if not demo.exists():
        return None
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, SQUIRREL_DATA_DIR=data, NO_COLOR="1")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(demo)], env=env, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"demo failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def main(quick: bool = False) -> dict[str, Any]:
    from llama_cpp import Llama
    from squirrel_models.manager import ModelManager

    path = _model_path()
    runs, max_tokens = (1, 16) if quick else (7, 128)
    llm = Llama(str(path), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False)
    cfg = {"providers": [{"name": "local", "type": "llama-local",
                          "options": {"models": [str(path)], "n_ctx": N_CTX, "idle_unload_s": None}}]}
    direct: list[tuple[float, float, int]] = []
    managed: list[tuple[float, float, int]] = []

    async def go() -> None:
        async with ModelManager(cfg) as mm:
            await _manager_run(mm, 4)  # warm both: load the model, fill caches
            _direct_run(llm, 4)
            for _ in range(runs):
                direct.append(_direct_run(llm, max_tokens))
                managed.append(await _manager_run(mm, max_tokens))

    try:
        anyio.run(go)
    finally:
        llm.close()

    def figures(rows: list[tuple[float, float, int]]) -> dict[str, float]:
        return {"tokens_per_s": round(median([r[1] for r in rows]), 1),
                "ttft_ms": round(median([r[0] for r in rows]) * 1000, 1),
                "tokens": int(median([r[2] for r in rows]))}

    d, m = figures(direct), figures(managed)
    ratio = round(m["tokens_per_s"] / d["tokens_per_s"], 3) if d["tokens_per_s"] else float("nan")
    ttft_ratio = round(m["ttft_ms"] / d["ttft_ms"], 3) if d["ttft_ms"] else float("nan")
    demo = None if quick else _demo_wall_time()
    print(f"{path.name}: {runs} run(s) of {max_tokens} tokens each")
    print(f"  direct llama_cpp : {d['tokens_per_s']:7.1f} tokens per second, first token {d['ttft_ms']:6.1f} ms")
    print(f"  via ModelManager : {m['tokens_per_s']:7.1f} tokens per second, first token {m['ttft_ms']:6.1f} ms")
    print(f"  ratio            : {ratio:.3f} of direct speed, first token x{ttft_ratio:.2f}")
    if demo is not None:
        print(f"  demo wall time   : {demo:.1f} s")
    result: dict[str, Any] = {
        "title": "Local model: ModelManager vs llama_cpp direct",
        "model": path.name,
        "direct": d,
        "manager": m,
        "ratio_tokens_per_s": ratio,
        "ratio_ttft": ttft_ratio,
        "demo_wall_s": None if demo is None else round(demo, 2),
        "targets": [{"target": "tokens/s via ModelManager / direct (at least)", "value": ratio,
                     "limit": 0.95, "unit": "x", "met": None if quick else ratio >= 0.95,
                     "at_least": True}],
        "notes": ["one compute thread on both paths; medians of interleaved streamed runs at temperature 0",
                  "time to first token includes the chat template, tokenizing and prompt processing "
                  "(and, via the manager, selection, exact counting and the budget reservation)"],
    }
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
