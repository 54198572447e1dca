"""Async HTTP clients on PyPI as the openai plugin's upstream client, against aiohttp, in one run.

Each client posts ``bench_realistic``'s request body to ``bench_realistic``'s server (a fast
OpenAI-compatible server on loopback, its own process) and reads the whole answer, set up as
the plugin's aiohttp engine is: a pool of 100, default headers with the key, no redirects, no
cookies kept where the client lets that be said, read timeouts. Figures, the clients taking
turns in interleaved rounds, each beside aiohttp's of the same run:

- CPU of this process per request at 64 concurrent (the client's cost: the server is another
  process; a client's own threads, such as a Rust runtime's, are counted), and throughput;
- sequential p50;
- with ``--cancel``: what a cancelled request leaves behind. A server that never answers; the
  request is cancelled 0.2 s after it is sent (as the core's deadline does); the seconds until
  the server sees its connection closed (the upstream stops working, and billing, for a
  request nobody waits for any more), capped at the client's read timeout of 3 s plus 1.

A client that is not installed is skipped (none is a dependency of the project: install them
into a scratch environment). Bodies, keys and figures of the plugin's own engines are in
``bench_realistic.py`` and ``bench_http.py``.

Run ``python benchmarks/upstream_clients.py [--rounds 5] [--requests 2000] [--cancel]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_realistic as br  # noqa: E402
from _common import concurrently  # noqa: E402

BODY = json.dumps({"model": br.MODEL, "messages": br.MESSAGES, "max_tokens": br.MAX_TOKENS}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
READ_TIMEOUT_S = 3.0

Call = Callable[[], Awaitable[tuple[int, bytes]]]
Close = Callable[[], Awaitable[None]]


async def _aiohttp(url: str) -> tuple[Call, Close]:
    import aiohttp
    from yarl import URL

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=5), headers=HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=READ_TIMEOUT_S))
    target = URL(url)

    async def call() -> tuple[int, bytes]:
        async with session.post(target, data=aiohttp.BytesPayload(BODY), allow_redirects=False) as r:
            return r.status, await r.read()

    return call, session.close


def _pyreqwest_client() -> Any:
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    return (ClientBuilder().max_connections(100).default_headers(HEADERS).follow_redirects(False)
            .read_timeout(timedelta(seconds=READ_TIMEOUT_S)).connect_timeout(timedelta(seconds=10))
            .build())


async def _pyreqwest(url: str) -> tuple[Call, Close]:
    client = _pyreqwest_client()

    async def call() -> tuple[int, bytes]:
        r = await client.post(url).body_bytes(BODY).build().send()
        return r.status, bytes(await r.bytes())

    return call, client.close


async def _pyreqwest_streamed(url: str) -> tuple[Call, Close]:
    """Read chunk by chunk, as an engine keeping the answer-size bound would."""
    client = _pyreqwest_client()

    async def call() -> tuple[int, bytes]:
        async with client.post(url).body_bytes(BODY).build_streamed() as r:
            parts = []
            while (chunk := await r.body_reader.read_chunk()) is not None:
                parts.append(bytes(chunk))
            return r.status, b"".join(parts)

    return call, client.close


async def _curl_cffi(url: str) -> tuple[Call, Close]:
    from curl_cffi.requests import AsyncSession

    session: Any = AsyncSession(max_clients=100, headers=HEADERS, timeout=READ_TIMEOUT_S,
                                allow_redirects=False)

    async def call() -> tuple[int, bytes]:
        r = await session.post(url, data=BODY)
        return r.status_code, r.content

    return call, session.close


async def _aiosonic(url: str) -> tuple[Call, Close]:
    import aiosonic
    from aiosonic.pools import PoolConfig
    from aiosonic.timeout import Timeouts

    client = aiosonic.HTTPClient(aiosonic.TCPConnector(
        pool_configs={":default": PoolConfig(size=100)}, timeouts=Timeouts(sock_read=READ_TIMEOUT_S)))

    async def call() -> tuple[int, bytes]:
        r = await client.post(url, data=BODY, headers=HEADERS)
        return r.status_code, await r.content()

    async def close() -> None:
        await client.connector.cleanup()

    return call, close


async def _niquests(url: str) -> tuple[Call, Close]:
    import niquests

    session = niquests.AsyncSession(pool_maxsize=100)
    session.headers.update(HEADERS)

    async def call() -> tuple[int, bytes]:
        r = await session.post(url, data=BODY, allow_redirects=False, timeout=READ_TIMEOUT_S)
        return r.status_code or 0, r.content or b""

    return call, session.close


async def _httpr(url: str) -> tuple[Call, Close]:
    import httpr

    client = httpr.AsyncClient(headers=HEADERS, timeout=READ_TIMEOUT_S, follow_redirects=False)

    async def call() -> tuple[int, bytes]:
        r = await client.post(url, content=BODY)
        return r.status_code, r.content

    async def close() -> None:
        client.close()

    return call, close


async def _bare_protocol(url: str) -> tuple[Call, Close]:
    """The floor: an asyncio protocol writing one prebuilt request per kept-alive connection
    and reading a Content-Length answer. Not a client (no timeouts, chunking, TLS, errors)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer sk-bench\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    loop = asyncio.get_running_loop()

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""
            self.answer: asyncio.Future[tuple[int, bytes]] = loop.create_future()

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if (message := br.split_message(self.buf)) is not None:
                head, body, self.buf = message
                self.answer.set_result((int(head[9:12]), body))

    idle: list[Conn] = []

    async def call() -> tuple[int, bytes]:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await loop.create_connection(Conn, parts.hostname, parts.port)
        conn.answer = loop.create_future()
        conn.transport.write(request)
        answer = await conn.answer
        idle.append(conn)
        return answer

    async def close() -> None:
        for conn in idle:
            conn.transport.close()

    return call, close


#: name -> (the module that must be importable, the opener); aiohttp first: the baseline.
CLIENTS: dict[str, tuple[str, Callable[[str], Awaitable[tuple[Call, Close]]]]] = {
    "aiohttp": ("aiohttp", _aiohttp),
    "pyreqwest": ("pyreqwest", _pyreqwest),
    "pyreqwest, streamed": ("pyreqwest", _pyreqwest_streamed),
    "curl-cffi": ("curl_cffi", _curl_cffi),
    "aiosonic": ("aiosonic", _aiosonic),
    "niquests": ("niquests", _niquests),
    "httpr": ("httpr", _httpr),
    "bare asyncio protocol": ("asyncio", _bare_protocol),
}


def installed() -> list[str]:
    return [name for name, (module, _) in CLIENTS.items() if importlib.util.find_spec(module) is not None]


async def sequential_p50(call: Call, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


async def compare(base_url: str, names: list[str], rounds: int, requests: int, sequential: int) -> None:
    url = base_url + "/chat/completions"
    opened = {name: await CLIENTS[name][1](url) for name in names}
    for name, (call, _) in opened.items():
        status, body = await call()
        assert status == 200 and b"choices" in body, name
        await concurrently(call, 256, br.CONCURRENCY)  # warm: 64 connections in the pool
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(rounds):  # interleaved: the machine's noise falls on every client alike
        for name, (call, _) in opened.items():
            rps, cpu = await concurrently(call, requests, br.CONCURRENCY)
            figures[name].append((rps, cpu, await sequential_p50(call, sequential)))
    for _, close in opened.values():
        await close()
    med = {name: [statistics.median(f[i] for f in rows) for i in range(3)] for name, rows in figures.items()}
    b_rps, b_cpu, b_p50 = med[names[0]]
    print(f"{'client':24s} {'CPU us/req @64':>15s} {'/ aiohttp':>9s} {'req/s @64':>10s} {'/ aiohttp':>9s}"
          f" {'seq p50 us':>10s} {'/ aiohttp':>9s}")
    for name, (rps, cpu, p50) in med.items():
        print(f"{name:24s} {cpu * 1e6:15.1f} {cpu / b_cpu:9.2f} {rps:10.0f} {rps / b_rps:9.2f}"
              f" {p50 * 1e6:10.0f} {p50 / b_p50:9.2f}")


async def cancelled(names: list[str]) -> None:
    for name in names:
        if name == "bare asyncio protocol":
            continue
        closed = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         closed: asyncio.Event = closed) -> None:
            # Never answers; reads until the client closes (or the loop ends: httpr's stays open).
            with contextlib.suppress(asyncio.CancelledError):
                while await reader.read(4096):
                    pass
                closed.set()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        call, close = await CLIENTS[name][1](f"http://127.0.0.1:{port}/v1/chat/completions")
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0.2)
        task.cancel()
        t0 = time.perf_counter()
        try:
            await task
        except asyncio.CancelledError:
            pass
        try:
            await asyncio.wait_for(closed.wait(), READ_TIMEOUT_S + 1)
            after = f"{time.perf_counter() - t0:.2f} s"
        except TimeoutError:
            after = f"still open after {READ_TIMEOUT_S + 1:.0f} s"
        print(f"{name:24s} connection closed after the cancel: {after}")
        await close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="per round, at 64 concurrent")
    parser.add_argument("--sequential", type=int, default=300, help="per round, one at a time")
    parser.add_argument("--cancel", action="store_true", help="only the cancellation check")
    args = parser.parse_args()
    names = installed()
    print("clients:", ", ".join(names), "| not installed:",
          ", ".join(n for n in CLIENTS if n not in names) or "none")
    if args.cancel:
        asyncio.run(cancelled(names))
    else:
        with br.Server() as server:
            asyncio.run(compare(server.base_url, names, args.rounds, args.requests, args.sequential))
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
