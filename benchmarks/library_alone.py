"""The library's own CPU per request: ``bench_realistic``'s request path with the HTTP call
answered in-process, at once.

``python benchmarks/library_alone.py [--requests N] [--concurrency C] [--profile FILE]``: the
realistic configuration (an ``openai`` provider with explicit prices, ``discover = false``,
default scoring, no budget, no OpenTelemetry SDK, each request built from message dicts), with
the provider's HTTP engine replaced by one that answers every POST with ``bench_realistic``'s
body and headers after one trip through the event loop. What remains is the library: request
construction and validation, ranking, the attempt, the plugin's body and answer parsing,
the response. Printed: CPU time per request of this process (median of 5 runs), and beside
it the baseline of the same run: the fake engine awaited directly with a body built as plain
aiohttp's client builds it (``json.dumps`` of the dicts, ``json.loads`` of the answer).
``--profile FILE`` writes a cProfile of one more run to FILE (``pstats`` reads it).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_realistic as br  # noqa: E402
from _common import concurrently  # noqa: E402


class _Reply:
    __slots__ = ("content", "headers", "status_code")

    def __init__(self, headers: Any) -> None:
        self.status_code = 200
        self.headers = headers
        self.content = br._ANSWER


class _InstantEngine:
    """Answers every POST with the realistic body after one trip through the loop."""

    name = "instant"

    def __init__(self) -> None:
        from multidict import CIMultiDict, CIMultiDictProxy

        lines = br._HEADERS.decode().strip().split("\r\n")
        headers = CIMultiDict(line.split(": ", 1) for line in lines)
        headers["Content-Length"] = str(len(br._ANSWER))
        self.headers = CIMultiDictProxy(headers)

    async def post(self, url: str, body: bytes) -> _Reply:
        await asyncio.sleep(0)
        return _Reply(self.headers)

    async def aclose(self) -> None:
        return None


async def _manager() -> Any:
    from squirrel_models import ModelManager

    os.environ.setdefault("BENCH_OPENAI_KEY", "sk-bench")
    mm = ModelManager(br.config("http://127.0.0.1:9/v1"))
    await mm.start()
    provider = mm.providers["openai"]
    provider._client = _InstantEngine()  # type: ignore[attr-defined]
    provider._client_loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
    return mm


async def _library(mm: Any, n: int, concurrency: int) -> float:
    from squirrel_models import AIRequest, Message

    async def one() -> None:
        request = AIRequest(messages=[Message(m["role"], m["content"]) for m in br.MESSAGES],
                            max_tokens=br.MAX_TOKENS)
        response = await mm.complete(request)
        assert response.text

    return await _burst(one, n, concurrency)


async def _baseline(n: int, concurrency: int) -> float:
    engine = _InstantEngine()

    async def one() -> None:
        body = {"model": br.MODEL, "messages": br.MESSAGES, "max_tokens": br.MAX_TOKENS}
        reply = await engine.post("/chat/completions", json.dumps(body).encode())
        data = json.loads(reply.content)
        assert data["usage"]["total_tokens"]
        assert data["choices"][0]["message"]["content"]

    return await _burst(one, n, concurrency)


async def _burst(one: Any, n: int, concurrency: int) -> float:
    return (await concurrently(one, n, concurrency))[1]


async def _run(n: int, concurrency: int, runs: int, profile: str | None) -> dict[str, float]:
    mm = await _manager()
    try:
        for _ in range(3):  # warm-up: caches, first-call imports
            await _library(mm, 200, concurrency)
            await _baseline(200, concurrency)
        lib, base = [], []
        for _ in range(runs):
            lib.append(await _library(mm, n, concurrency))
            base.append(await _baseline(n, concurrency))
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            await _library(mm, n, concurrency)
            prof.disable()
            prof.dump_stats(profile)
    finally:
        await mm.aclose()
    return {"library_us": statistics.median(lib) * 1e6, "baseline_us": statistics.median(base) * 1e6,
            "library_runs_us": [round(x * 1e6, 1) for x in lib]}  # type: ignore[dict-item]


def main() -> None:
    argv = sys.argv[1:]

    def opt(name: str, default: str | None) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else default

    n = int(opt("--requests", "1500") or 1500)
    concurrency = int(opt("--concurrency", "1") or 1)
    out = asyncio.run(_run(n, concurrency, 5, opt("--profile", None)))
    print(f"load average {os.getloadavg()[0]:.1f}; {n} requests x 5 runs, concurrency {concurrency}")
    print(f"library, CPU per request: {out['library_us']:.1f} us (runs: {out['library_runs_us']})")
    print(f"baseline (the fake engine called directly, json): {out['baseline_us']:.1f} us")
    print(f"library alone: {out['library_us'] - out['baseline_us']:.1f} us per request")
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
