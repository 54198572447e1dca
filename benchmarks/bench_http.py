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

CONCURRENCY = 64
STREAM_CHUNKS = 200
_ANSWER = json.dumps({
    "id": "c", "object": "chat.completion", "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}).encode()
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


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
            body, self.buf = self.buf[end + 4:end + 4 + n], self.buf[end + 4 + n:]
            streamed = b'"stream":true' in body or b'"stream": true' in body
            self.transport.write(self.streamed if streamed else self.plain)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Stub, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class StubServer:
    """The stub in a child process; ``base_url`` ends in ``/v1``."""

    def __enter__(self) -> StubServer:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
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


async def _measure(base: str, make: Callable[[str], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]],
                   n_seq: int, n_stream: int, n_conc: int) -> dict[str, float]:
    call, close = await make(base)
    try:
        for _ in range(20):  # warm up: connections, imports, tokenizer, caches
            await call(False)
        await call(True)
        lat = []
        for _ in range(n_seq):
            t0 = time.perf_counter()
            await call(False)
            lat.append(time.perf_counter() - t0)
        lat.sort()
        t0 = time.perf_counter()
        chunks = 0
        for _ in range(n_stream):
            chunks += await call(True)
        per_chunk = (time.perf_counter() - t0) / (n_stream * STREAM_CHUNKS)
        assert chunks >= n_stream * STREAM_CHUNKS, chunks
        queue = iter(range(n_conc))

        async def worker() -> None:
            for _ in queue:
                await call(False)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        rps = n_conc / (time.perf_counter() - t0)
    finally:
        await close()
    return {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
            "chunk_us": per_chunk * 1e6, "rps": rps}


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    """Run every client against one stub; print the table and return the figures."""
    n_seq, n_stream, n_conc = (60, 2, 256) if quick else (1000, 20, 4000)
    results: dict[str, dict[str, float]] = {}
    with StubServer() as stub:
        for name, (_, make) in CLIENTS.items():
            results[name] = asyncio.run(_measure(stub.base_url, make, n_seq, n_stream, n_conc))
    _print(results)
    return results


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
