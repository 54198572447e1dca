"""The gateway's cost: what ``squirrel serve`` adds over calling the upstream directly.

One fast OpenAI-compatible stub (bench_http's, in its own process) is the upstream. In one
run, with one client (plain ``aiohttp`` in this process, 64 connections):

- **direct**: the client calls the stub;
- **gateway (uvicorn)**: the client calls the gateway (the chat endpoint, a ``ModelManager``
  with the openai plugin on its aiohttp transport and an upstream key, a priced model, the
  in-memory budget, one virtual key) served as ``squirrel serve`` serves it (uvicorn, its
  settings) in a child process, which calls the stub;
- **gateway (granian)**: the same app served by granian (a Rust HTTP server), when it is
  installed: the comparison the server choice rests on;
- **manager in-process**: what the gateway does per request (``AIRequest.from_openai``,
  ``ModelManager.complete``, ``to_openai``) called in this process, without an HTTP server:
  the floor the gateway adds its server to;
- **app in-process**: the gateway's ASGI app itself called in this process as a server calls
  it (scope, receive, send), without HTTP: against the manager's row, what the chat route
  adds of its own; against the uvicorn row, what the server and the second hop add.

Printed: sequential latency p50/p99 and the gateway's added p50 over direct (target under
500 us; LiteLLM's proxy publishes about 12 ms median), and throughput at 64 concurrent
clients as a ratio to direct. Run ``python benchmarks/bench_gateway.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import concurrently, median, percentile, ratio, target  # noqa: E402
from bench_http import StubServer  # noqa: E402

CONCURRENCY = 64
KEY = "sqk-bench-4d1f8a2c9e7b6053"
BODY = {"model": "stub/stub", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
TARGET_ADDED_P50_US = 500.0
CONFIG_ENV = "SQUIRREL_BENCH_GATEWAY_CONFIG"
#: The upstream's API key, as a real deployment has one (the stub ignores it): registered as a
#: secret, so what the gateway sends out is searched for it, as it would be in use.
UPSTREAM_KEY_ENV = "SQUIRREL_BENCH_UPSTREAM_KEY"
os.environ.setdefault(UPSTREAM_KEY_ENV, "up-bench-51c7e0a94d2b86f3")


def _config(upstream: str) -> dict[str, Any]:
    import hashlib

    return {
        "providers": [{"name": "stub", "type": "openai", "discover": False,
                       "options": {"base_url": upstream, "transport": "aiohttp",
                                   "api_key_env": UPSTREAM_KEY_ENV},
                       "models": [{"name": "stub", "price": {"input": "0.1", "output": "0.2"},
                                   "context_window": 8192, "max_output_tokens": 256}]}],
        "budget": {"limits": [{"scope": "key:bench", "period": "day", "limit": "1000000"}]},
        "gateway": {"host": "127.0.0.1", "port": 0, "metrics": False,
                    "keys": [{"name": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
    }


def app_factory() -> Any:
    """The gateway app of the configuration in ``$SQUIRREL_BENCH_GATEWAY_CONFIG`` (the child
    processes' entry point; granian imports it by name)."""
    from squirrel_models_gateway import build

    app, _ = build(json.loads(os.environ[CONFIG_ENV]))
    return app


def _tree_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` and its descendants (granian's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    family, total, grew = {pid}, 0.0, True
    while grew:
        grew = False
        for p, (parent, _) in stats.items():
            if parent in family and p not in family:
                family.add(p)
                grew = True
    for p in family:
        total += stats.get(p, (0, 0.0))[1]
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_child(server: str, port: int) -> None:
    if server == "uvicorn":  # as ``squirrel serve`` runs it, with its uvicorn settings
        from squirrel_models_gateway import serve

        serve(json.loads(os.environ[CONFIG_ENV]), port=port)
    else:
        from granian import Granian

        Granian("bench_gateway:app_factory", factory=True, address="127.0.0.1", port=port,
                interface="asgi", workers=1, log_enabled=False).serve()


class GatewayProcess:
    """The gateway served by ``server`` in a child process; ``base_url`` ends in ``/v1``."""

    def __init__(self, server: str, upstream: str) -> None:
        self.server, self.port = server, _free_port()
        env = {**os.environ, CONFIG_ENV: json.dumps(_config(upstream)),
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", server, str(self.port)],
                                     env=env, stdin=subprocess.DEVNULL)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"the gateway ({server}) did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def _measure(urls: dict[str, str], pids: dict[str, int], n_seq: int, n_conc: int, rounds: int
                   ) -> dict[str, dict[str, float]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    body = json.dumps(BODY).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}

    def caller(url: str) -> Any:
        async def call() -> None:
            async with session.post(url + "/chat/completions", data=body, headers=headers) as r:
                data = json.loads(await r.read())
                assert r.status == 200 and data["choices"], data
        return call

    from squirrel_models import AIRequest, ModelManager

    cfg = _config(urls["direct"])
    del cfg["gateway"]
    manager = ModelManager(cfg)
    await manager.start()

    async def in_process() -> None:
        # What the gateway does per request, without its HTTP server: the floor it adds to.
        response = await manager.complete(AIRequest.from_openai(json.loads(body), budget_key="bench"))
        json.dumps(response.to_openai())

    from squirrel_models_gateway import build

    app, _ = build(_config(urls["direct"]))
    lifespan = app.state.gateway.lifespan()
    await lifespan.__aenter__()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"authorization", headers["authorization"].encode()),
                         (b"content-length", str(len(body)).encode())]}
    never = asyncio.Event()  # the client stays: receive() after the body waits for ever

    async def app_in_process() -> None:
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(dict(scope), receive, send)
        assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["choices"], sent

    try:
        calls = {name: caller(url) for name, url in urls.items()}
        calls["manager in-process"] = in_process
        calls["app in-process"] = app_in_process
        for call in calls.values():  # warm up: connections, tokenizers, caches
            for _ in range(50):
                await call()
        lat: dict[str, list[float]] = {k: [] for k in calls}
        cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
        done = 0
        while done < n_seq:  # interleaved in blocks so the machine's noise hits all alike
            for name, call in calls.items():
                c0 = _tree_cpu(pids.get(name, os.getpid()))
                for _ in range(50):
                    t0 = time.perf_counter()
                    await call()
                    lat[name].append(time.perf_counter() - t0)
                cpu[name] += _tree_cpu(pids.get(name, os.getpid())) - c0
            done += 50

        async def burst(call: Any, n: int) -> float:
            return (await concurrently(call, n, CONCURRENCY))[0]

        for call in calls.values():
            await burst(call, CONCURRENCY * 2)
        rps: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                rps[name].append(await burst(call, n_conc))
    finally:
        await session.close()
        await manager.aclose()
        await lifespan.__aexit__(None, None, None)
    return {name: {"p50_us": percentile(lat[name], 50) * 1e6, "p99_us": percentile(lat[name], 99) * 1e6,
                   "rps": median(rps[name]), "server_cpu_us": cpu[name] / len(lat[name]) * 1e6}
            for name in calls}


def _servers() -> list[str]:
    servers = ["uvicorn"]
    try:
        import granian  # noqa: F401
    except ImportError:
        pass
    else:
        servers.append("granian")
    return servers


def run(quick: bool = False) -> dict[str, dict[str, float]]:
    n_seq, n_conc, rounds = (100, 256, 1) if quick else (2000, 2000, 3)
    with StubServer() as stub:
        gateways = {}
        try:
            for server in _servers():
                gateways[f"gateway ({server})"] = GatewayProcess(server, stub.base_url)
            urls = {"direct": stub.base_url, **{k: g.base_url for k, g in gateways.items()}}
            pids = {"direct": stub.proc.pid, **{k: g.proc.pid for k, g in gateways.items()}}
            return asyncio.run(_measure(urls, pids, n_seq, n_conc, rounds))
        finally:
            for g in gateways.values():
                g.stop()


def main(quick: bool = False) -> dict[str, Any]:
    results = run(quick)
    direct = results["direct"]
    table = [{"path": name, "p50_us": round(r["p50_us"], 1), "p99_us": round(r["p99_us"], 1),
              "added_p50_us": round(r["p50_us"] - direct["p50_us"], 1), "rps_64": round(r["rps"]),
              "rps_vs_direct": ratio(r["rps"], direct["rps"]),
              "server_cpu_us_per_req": round(r["server_cpu_us"], 1)} for name, r in results.items()]
    by = {row["path"]: row for row in table}
    uv = by["gateway (uvicorn)"]
    targets = [
        target("gateway (uvicorn) added p50 over the upstream called directly", uv["added_p50_us"],
               TARGET_ADDED_P50_US, "us", quick=quick),
    ]
    for row in table:
        print(f"{row['path']:<20} p50 {row['p50_us']:>8.1f} us  p99 {row['p99_us']:>8.1f} us  "
              f"added p50 {row['added_p50_us']:>8.1f} us  {row['rps_64']:>6} req/s at 64  "
              f"({row['rps_vs_direct']:.2f}x direct)  server CPU {row['server_cpu_us_per_req']:>7.1f} us/req")
    return {
        "title": "Gateway: squirrel serve over the upstream called directly",
        "table": table,
        "targets": targets,
        "notes": [
            "One aiohttp client (64 connections) in the benchmark process; the stub upstream and "
            "each gateway in child processes; sequential latency interleaved in blocks of 50, "
            "throughput as the median of rounds at 64 concurrent.",
            "server CPU: CPU time of the serving process (and its workers; the stub for direct; this "
            "process, client included, for manager in-process and app in-process) per "
            "sequential request, read from /proc: on a loaded machine the wall-clock figures are "
            "mostly waiting for a CPU, this is what the gateway itself costs.",
            "The gateway's path includes everything a real request does: key check, JSON parse, "
            "AIRequest.from_openai, selection, the budget reservation and settlement, the openai "
            "plugin's aiohttp call, to_openai and the response headers.",
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--serve":
        _serve_child(sys.argv[2], int(sys.argv[3]))
    else:
        main(quick="--quick" in sys.argv)
