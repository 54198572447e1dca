"""The gateway of several source trees served side by side, measured in one run.

``python benchmarks/gateway_ab.py NAME=TREE [NAME=TREE ...] [--floors] [--seq N] [--conc N]
[--rounds R] [--gaps MS,MS]``: each ``TREE`` is a checkout of this repository (``git worktree add`` or
``git archive | tar -x``); its gateway is served as ``squirrel serve`` serves it (its own
sources first on ``PYTHONPATH``, this interpreter's packages) with ``bench_gateway``'s
configuration, against one stub upstream. One aiohttp client then sends ``--seq`` sequential
requests to each, interleaved in blocks of 100 (the shared machine's noise hits all alike),
and ``--rounds`` bursts of ``--conc`` requests at 64 concurrent. Printed per server: p50, p90,
added p50 over the stub called directly, and the serving process's CPU per request (all its
threads, from ``/proc/PID/task/*/schedstat``, in nanoseconds), sequential and concurrent.

``--gaps MS[,MS...]`` (default ``0``): the sequential requests again for each gap, the client
idle for that many milliseconds after each request (in the same interleaved blocks): what a
request costs a server that has gone idle since the last one, as at a low request rate,
against back to back. A line per server and gap.

``--floors`` adds two servers with the same uvicorn settings and no gateway: ``floor:asgi``
answers at once (what uvicorn itself costs over the stub's bare asyncio protocol) and
``floor:aiohttp`` forwards the body to the stub with a plain ``aiohttp.ClientSession`` (what
a second loopback hop costs with the gateway's HTTP client, and nothing else).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_gateway as bg  # noqa: E402
from _common import concurrently  # noqa: E402
from bench_http import StubServer  # noqa: E402

_SOURCES = ("core/src", "plugins/gateway/src", "plugins/openai/src", "plugins/sqlite-budget/src")
_ANSWER = (b'{"id":"x","object":"chat.completion","created":0,"model":"stub","choices":[{"index":0,'
           b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}')


def _floor_app(kind: str, upstream: str) -> Any:
    import aiohttp

    session: list[Any] = []
    url = upstream + "/chat/completions"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        out = _ANSWER
        if kind == "aiohttp" and scope["path"].endswith("/chat/completions"):
            if not session:
                session.append(aiohttp.ClientSession())
            async with session[0].post(url, data=body, headers={"content-type": "application/json"}) as r:
                out = await r.read()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app


def _serve_floor(kind: str, port: int, upstream: str) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(_floor_app(kind, upstream), host="127.0.0.1", port=port,
                                  lifespan="on", access_log=False, server_header=False,
                                  proxy_headers=False, log_level="warning")).run()


def _cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def _spawn(what: str, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """A server: ``floor:KIND`` or the gateway of the tree at ``what``."""
    port = bg._free_port()
    env = dict(os.environ)
    if what.startswith("floor:"):
        argv = [sys.executable, __file__, "--serve-floor", what[6:], str(port), upstream]
    else:
        paths = [str(Path(what) / p) for p in _SOURCES] + [str(HERE)]
        env[bg.CONFIG_ENV] = json.dumps(bg._config(upstream))
        env["PYTHONPATH"] = os.pathsep.join(paths)
        argv = [sys.executable, str(HERE / "bench_gateway.py"), "--serve", "uvicorn", str(port)]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/v1"


async def _measure(urls: dict[str, str], pids: dict[str, int], n_seq: int, n_conc: int,
                   rounds: int, gaps: tuple[float, ...] = (0.0,), block: int = 100
                   ) -> dict[str, dict[str, float]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    body = json.dumps(bg.BODY).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {bg.KEY}"}

    def caller(url: str) -> Any:
        async def call() -> None:
            async with session.post(url + "/chat/completions", data=body, headers=headers) as r:
                assert r.status == 200, await r.read()
                await r.read()
        return call

    calls = {name: caller(url) for name, url in urls.items()}
    try:
        for call in calls.values():
            for _ in range(100):
                await call()
        runs = [(name, gap) for name in calls for gap in gaps]
        lat: dict[tuple[str, float], list[float]] = {k: [] for k in runs}
        cpu = dict.fromkeys(runs, 0)
        while min(len(v) for v in lat.values()) < n_seq:
            for name, gap in runs:
                call = calls[name]
                c0 = _cpu_ns(pids[name])
                for _ in range(block):
                    t0 = time.perf_counter()
                    await call()
                    lat[name, gap].append(time.perf_counter() - t0)
                    if gap:
                        await asyncio.sleep(gap / 1000)
                cpu[name, gap] += _cpu_ns(pids[name]) - c0

        async def burst(call: Any, n: int) -> float:
            return (await concurrently(call, n, bg.CONCURRENCY))[0]

        rps: dict[str, list[float]] = {k: [] for k in calls}
        ccpu = dict.fromkeys(calls, 0)
        for _ in range(rounds):
            for name, call in calls.items():
                c0 = _cpu_ns(pids[name])
                rps[name].append(await burst(call, n_conc))
                ccpu[name] += _cpu_ns(pids[name]) - c0
    finally:
        await session.close()
    out = {}
    for name, gap in runs:
        s = sorted(lat[name, gap])
        out[name if gap == gaps[0] else f"{name} {gap:g} ms apart"] = {
            "p50_us": s[len(s) // 2] * 1e6, "p90_us": s[int(len(s) * 0.9)] * 1e6,
            "cpu_us": cpu[name, gap] / len(s) / 1e3,
            "rps": statistics.median(rps[name]) if rps[name] else 0.0,
            "cpu_conc_us": ccpu[name] / max(1, n_conc * rounds) / 1e3}
    return out


def main(argv: list[str]) -> None:
    n_seq, n_conc, rounds, floors, gaps = 3000, 2000, 3, False, (0.0,)
    servers: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        if arg in ("--seq", "--conc", "--rounds"):
            value = int(next(args))
            n_seq, n_conc, rounds = (value if arg == "--seq" else n_seq,
                                     value if arg == "--conc" else n_conc,
                                     value if arg == "--rounds" else rounds)
        elif arg == "--floors":
            floors = True
        elif arg == "--gaps":
            gaps = tuple(float(ms) for ms in next(args).split(","))
        else:
            name, _, tree = arg.partition("=")
            servers[name] = tree
    if floors:
        servers.update({"floor:asgi": "floor:asgi", "floor:aiohttp": "floor:aiohttp"})
    load = os.getloadavg()[0]
    with StubServer() as stub:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            urls, pids = {"direct": stub.base_url}, {"direct": stub.proc.pid}
            for name, what in servers.items():
                procs[name], urls[name] = _spawn(what, stub.base_url)
                pids[name] = procs[name].pid
            results = asyncio.run(_measure(urls, pids, n_seq, n_conc, rounds, gaps))
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(20)
    print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}; {n_seq} sequential requests "
          f"each, {rounds} x {n_conc} at {bg.CONCURRENCY} concurrent")
    for name, r in results.items():
        apart = name.partition(" ")[2]  # "10 ms apart" on the lines of a --gaps run
        direct = results["direct " + apart if apart else "direct"]["p50_us"]
        print(f"{name:<26} p50 {r['p50_us']:7.1f} us (+{r['p50_us'] - direct:6.1f})  p90 "
              f"{r['p90_us']:7.1f}  CPU {r['cpu_us']:6.1f} us/req" + ("" if apart else
              f"  at 64: {r['rps']:6.0f} req/s, CPU {r['cpu_conc_us']:6.1f} us/req"))
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-floor":
        _serve_floor(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main(sys.argv[1:])
