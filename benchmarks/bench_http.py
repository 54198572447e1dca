"""HTTP overhead of the openai plugin: the same calls made plain and through ModelManager.

Against a fast OpenAI-compatible stub (a raw asyncio HTTP/1.1 server in its own process, so it
never shares the client's event loop), in one run:

- plain ``httpx.AsyncClient`` and plain ``aiohttp.ClientSession`` (the floors);
- the plugin's provider called directly, with each transport (``httpx``, ``aiohttp``);
- ``ModelManager`` with the plugin, with each transport.

Printed: sequential latency p50/p99 and the overhead over the plain client of the same
engine, the cost per streamed chunk, and throughput at 64 concurrent requests as a ratio to
plain aiohttp and plain httpx. Run ``python benchmarks/bench_http.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import ainterleaved, median, percentile, ratio, target  # noqa: E402

CONCURRENCY = 64
STREAM_CHUNKS = 200
_ANSWER = json.dumps({
    "id": "c", "object": "chat.completion", "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}).encode()
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_ERROR = json.dumps({"error": {"message": "The server had an error.", "type": "server_error",
                               "code": None}}).encode()
#: What the stub answers to any path under ``/fail/`` (bench_fallback's failing primary).
FAILED = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(_ERROR)) + _ERROR


def _stream_body(n: int) -> bytes:
    events = [{"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "tok "},
                                                               "finish_reason": None}]}] * n
    events.append({"object": "chat.completion.chunk", "choices": [], "usage": {
        "prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body


# --- the stub server (runs in a child process) ------------------------------------------


class _Stub(asyncio.Protocol):
    plain = (_HEAD % len(_ANSWER)) + _ANSWER
    streamed = _stream_body(STREAM_CHUNKS)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            failing = self.buf.startswith(b"POST /fail/")
            body, self.buf = self.buf[end + 4:end + 4 + n], self.buf[end + 4 + n:]
            if failing:
                self.transport.write(FAILED)
                continue
            streamed = b'"stream":true' in body or b'"stream": true' in body
            self.transport.write(self.streamed if streamed else self.plain)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Stub, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class StubServer:
    """The stub in a child process; ``base_url`` ends in ``/v1``; any path under ``/fail/``
    (``failing_url``) answers 500 with an OpenAI-style error body."""

    def __enter__(self) -> StubServer:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.failing_url = f"http://127.0.0.1:{self.port}/fail/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- the clients --------------------------------------------------------------------------

Call = Callable[[bool], Awaitable[int]]  # stream? -> chunks received
BODY = {"model": "stub", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


async def _plain_httpx(base: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import httpx

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    client = httpx.AsyncClient(limits=limits, timeout=30)
    url = base + "/chat/completions"
    plain = json.dumps(BODY).encode()
    streamed = json.dumps({**BODY, "stream": True}).encode()
    headers = {"content-type": "application/json"}

    async def call(stream: bool) -> int:
        if not stream:
            r = await client.post(url, content=plain, headers=headers)
            json.loads(r.content)
            return 1
        n = 0
        async with client.stream("POST", url, content=streamed, headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])
                    n += 1
        return n

    return call, client.aclose


async def _plain_aiohttp(base: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    url = base + "/chat/completions"
    plain = json.dumps(BODY).encode()
    streamed = json.dumps({**BODY, "stream": True}).encode()
    headers = {"content-type": "application/json"}

    async def call(stream: bool) -> int:
        async with session.post(url, data=streamed if stream else plain, headers=headers) as r:
            if not stream:
                json.loads(await r.read())
                return 1
            n = 0
            async for raw in r.content:
                line = raw.strip()
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    json.loads(line[6:])
                    n += 1
            return n

    return call, session.close


async def _provider(base: str, transport: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from squirrel_models import AIRequest, ModelCard
    from squirrel_models_openai import OpenAIOptions, OpenAIProvider

    p = OpenAIProvider("stub", OpenAIOptions(base_url=base, discover=False, transport=transport))  # type: ignore[arg-type]
    card = ModelCard.for_provider("stub", "stub", provider_type="openai")
    req = AIRequest.from_prompt("Say hello.", max_tokens=16)

    async def call(stream: bool) -> int:
        if not stream:
            await p.complete(card, req)
            return 1
        n = 0
        async for c in p.stream(card, req):
            n += 1 if c.text else 0
        return n

    return call, p.aclose


async def _manager(base: str, transport: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from squirrel_models import AIRequest, ModelManager

    cfg = {"providers": [{"name": "stub", "type": "openai", "discover": False,
                          "options": {"base_url": base, "transport": transport},
                          "models": [{"name": "stub", "price": {"input": "0.1", "output": "0.2"}}]}]}
    mm = ModelManager(cfg)
    await mm.start()
    req = AIRequest.from_prompt("Say hello.", max_tokens=16)

    async def call(stream: bool) -> int:
        if not stream:
            await mm.complete(req)
            return 1
        n = 0
        async with mm.stream(req) as s:
            async for c in s:
                n += 1 if c.text else 0
        return n

    return call, mm.aclose


CLIENTS: dict[str, tuple[str, Callable[[str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]]]] = {
    "plain httpx": ("httpx", _plain_httpx),
    "plain aiohttp": ("aiohttp", _plain_aiohttp),
    "provider, httpx": ("httpx", lambda b: _provider(b, "httpx")),
    "provider, aiohttp": ("aiohttp", lambda b: _provider(b, "aiohttp")),
    "ModelManager, httpx": ("httpx", lambda b: _manager(b, "httpx")),
    "ModelManager, aiohttp": ("aiohttp", lambda b: _manager(b, "aiohttp")),
}


# --- measurements -------------------------------------------------------------------------


async def _measure_all(base: str, n_seq: int, n_stream: int, n_conc: dict[str, int], rounds: int
                       ) -> dict[str, dict[str, float]]:
    """Every client open in one event loop, each phase interleaved across the clients so the
    machine's noise hits them alike: sequential latency in blocks of 50, streams one by one,
    and ``rounds`` rounds of throughput at 64 concurrent on warm pools (medians)."""
    opened: dict[str, tuple[Call, Callable[[], Awaitable[None]]]] = {}
    try:
        for name, (_, make) in CLIENTS.items():
            opened[name] = await make(base)
        calls = {name: call for name, (call, _) in opened.items()}
        for call in calls.values():  # warm up: connections, imports, tokenizer, caches
            for _ in range(20):
                await call(False)
            await call(True)

        def plain(call: Call) -> Callable[[], Awaitable[int]]:
            return lambda: call(False)

        lat = await ainterleaved({k: plain(c) for k, c in calls.items()}, n_seq, block=50)
        stream_s = dict.fromkeys(calls, 0.0)
        for _ in range(n_stream):
            for name, call in calls.items():
                t0 = time.perf_counter()
                chunks = await call(True)
                stream_s[name] += time.perf_counter() - t0
                assert chunks >= STREAM_CHUNKS, (name, chunks)

        async def burst(call: Call, n: int) -> tuple[float, float]:
            queue = iter(range(n))

            async def worker() -> None:
                for _ in queue:
                    await call(False)

            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return n / (time.perf_counter() - t0), (time.process_time() - c0) / n

        for call in calls.values():  # fill each pool to 64 connections first
            await burst(call, CONCURRENCY * 4)
        rps: dict[str, list[float]] = {k: [] for k in calls}
        cpu: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                r, c = await burst(call, n_conc[CLIENTS[name][0]])
                rps[name].append(r)
                cpu[name].append(c)
    finally:
        for _, close in opened.values():
            await close()
    return {name: {"p50_us": percentile(lat[name], 50) * 1e6, "p99_us": percentile(lat[name], 99) * 1e6,
                   "chunk_us": stream_s[name] / (n_stream * STREAM_CHUNKS) * 1e6,
                   "rps": median(rps[name]), "cpu_us_per_req": median(cpu[name]) * 1e6}
            for name in CLIENTS}


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    """Run every client against one stub; print the table and return the figures."""
    n_seq, n_stream, rounds = (60, 2, 1) if quick else (2000, 20, 5)
    # httpx manages a few hundred requests per second at 64 concurrent: fewer per round.
    n_conc = {"aiohttp": 256, "httpx": 128} if quick else {"aiohttp": 4000, "httpx": 1000}
    with StubServer() as stub:
        results = asyncio.run(_measure_all(stub.base_url, n_seq, n_stream, n_conc, rounds))
    _print(results)
    return results


TARGET_OVERHEAD_US = 150.0
TARGET_THROUGHPUT = 0.8
TARGET_CHUNK_US = 20.0


def report(results: dict[str, dict[str, float]], quick: bool) -> dict[str, Any]:
    """The figures shaped for benchmarks/run.py's report: ratios to the plain clients, targets."""
    plain = {"httpx": results["plain httpx"], "aiohttp": results["plain aiohttp"]}
    table = []
    for name, r in results.items():
        base = plain[CLIENTS[name][0]]
        table.append({
            "client": name, "p50_us": round(r["p50_us"], 1), "p99_us": round(r["p99_us"], 1),
            "added_p50_us": round(r["p50_us"] - base["p50_us"], 1),
            "chunk_us": round(r["chunk_us"], 2), "added_chunk_us": round(r["chunk_us"] - base["chunk_us"], 2),
            "rps_64": round(r["rps"]), "rps_vs_plain_aiohttp": ratio(r["rps"], plain["aiohttp"]["rps"]),
            "rps_vs_plain_same_engine": ratio(r["rps"], base["rps"]),
            "cpu_us_per_req": round(r["cpu_us_per_req"], 1)})
    by = {row["client"]: row for row in table}
    mgr = by["ModelManager, aiohttp"]
    targets = [
        target("ModelManager (aiohttp engine) added p50 over plain aiohttp", mgr["added_p50_us"],
               TARGET_OVERHEAD_US, "us", quick=quick),
        target("ModelManager (httpx engine) added p50 over plain httpx",
               by["ModelManager, httpx"]["added_p50_us"], TARGET_OVERHEAD_US, "us", quick=quick),
        target("ModelManager (aiohttp) throughput at 64 concurrent / plain aiohttp", mgr["rps_vs_plain_aiohttp"],
               TARGET_THROUGHPUT, "x", quick=quick, at_least=True),
        target("ModelManager (aiohttp) added time per streamed chunk", mgr["added_chunk_us"],
               TARGET_CHUNK_US, "us", quick=quick),
    ]
    return {
        "title": "HTTP path: the openai plugin vs plain httpx and plain aiohttp",
        "table": table,
        "targets": targets,
        "notes": [
            f"one stub in its own process (bench_http.py --serve); all clients open in one event loop; "
            f"phases interleaved across clients; {STREAM_CHUNKS} chunks per stream.",
            "added_*: over the plain client of the same engine. rps_64: median of the rounds at "
            f"{CONCURRENCY} concurrent on warm pools; cpu_us_per_req: this process's CPU time per request "
            "in those rounds (the client is CPU-bound: the stub answers at once).",
        ],
    }


def _print(results: dict[str, dict[str, float]]) -> None:
    plain = {"httpx": results["plain httpx"], "aiohttp": results["plain aiohttp"]}
    print(f"\nOpenAI-compatible stub, {CONCURRENCY} concurrent, {STREAM_CHUNKS} chunks per stream "
          f"(python {sys.version.split()[0]}, pid {os.getpid()})")
    print(f"{'client':<24}{'p50 us':>9}{'p99 us':>9}{'+p50 us':>9}{'us/chunk':>10}{'+us/chunk':>10}"
          f"{'req/s':>9}{'/aiohttp':>9}{'/httpx':>8}")
    for name, r in results.items():
        base = plain[CLIENTS[name][0]]
        print(f"{name:<24}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['p50_us'] - base['p50_us']:>+9.0f}"
              f"{r['chunk_us']:>10.1f}{r['chunk_us'] - base['chunk_us']:>+10.1f}{r['rps']:>9.0f}"
              f"{r['rps'] / plain['aiohttp']['rps']:>9.2f}{r['rps'] / plain['httpx']['rps']:>8.2f}")
    print("+p50 and +us/chunk: over the plain client of the same engine.")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        asyncio.run(_serve())
    else:
        main(quick="--quick" in sys.argv)
