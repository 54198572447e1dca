"""Instructions per request of the gateway's parts, counted by callgrind (steadier than time on
a shared, loaded machine: repeated runs agree within about 1 %).

``python benchmarks/gateway_callgrind.py server WHAT [WHAT ...]``: each ``WHAT`` served as
``gateway_ab.py`` serves it (a source tree's gateway with ``bench_gateway``'s configuration,
or ``floor:asgi`` / ``floor:aiohttp``) in a child process run under callgrind against one stub
upstream; 300 sequential requests to warm it, then collection is switched on
(``callgrind_control -i on``) for ``--n`` sequential requests (default 500). Printed: the
serving process's instructions per request, its event loop, uvicorn and httptools included.

``python benchmarks/gateway_callgrind.py client VARIANT [VARIANT ...]``: this process under
callgrind, one variant of ``bench_gateway``'s in-process rows at a time against the stub:
``plain`` (direct's client: an aiohttp session's post and ``json.loads``), ``bare`` (the
manager, one request object reused, no budget, no ``to_openai``: what ``bench_realistic``'s
headline row measures), ``parse`` (``bare`` plus ``AIRequest.from_openai`` of the body per
request), ``json`` (``parse`` plus ``to_openai`` and ``json.dumps``), ``budget``
(``bench_gateway``'s "manager in-process": ``json`` with its memory budget on ``key:bench``)
and ``app`` (the gateway's app driven as a server drives it, with the protocol's disconnect
hook: "app in-process").

Needs valgrind (``callgrind_control``) and the benchmark's packages (aiohttp, uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_gateway as bg  # noqa: E402
from bench_http import StubServer  # noqa: E402

WARM = 300
_CALLGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=no"]
_SOURCES = ("core/src", "plugins/gateway/src", "plugins/openai/src", "plugins/sqlite-budget/src")


def _total(out: str) -> int:
    """The instructions a callgrind output file counted (its ``totals:`` line; ``summary:``
    is 0 when collection started switched off)."""
    with open(out) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {out}")


def _toggle(pid: int, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True,
                   capture_output=True)


# --- the serving process -------------------------------------------------------------------

def _serve(what: str, upstream: str, out: str) -> tuple[subprocess.Popen[bytes], str]:
    port = bg._free_port()
    env = dict(os.environ)
    if what.startswith("floor:"):
        argv = [sys.executable, str(HERE / "gateway_ab.py"), "--serve-floor", what[6:], str(port),
                upstream]
        env["PYTHONPATH"] = str(HERE)
    else:
        env[bg.CONFIG_ENV] = json.dumps(bg._config(upstream))
        env["PYTHONPATH"] = os.pathsep.join([str(Path(what) / p) for p in _SOURCES] + [str(HERE)])
        argv = [sys.executable, str(HERE / "bench_gateway.py"), "--serve", "uvicorn", str(port)]
    proc = subprocess.Popen([*_CALLGRIND, f"--callgrind-out-file={out}", *argv], env=env,
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 600  # start-up under callgrind takes a while
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise SystemExit(f"{what} did not start")
        time.sleep(0.5)


async def _send(url: str, n: int) -> None:
    import aiohttp

    body = json.dumps(bg.BODY).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {bg.KEY}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(url + "/chat/completions", data=body, headers=headers) as r:
                data = await r.read()
                assert r.status == 200, data


def server(whats: list[str], n: int) -> None:
    with StubServer() as stub, tempfile.TemporaryDirectory() as tmp:
        for what in whats:
            out = os.path.join(tmp, "callgrind.out")
            proc, url = _serve(what, stub.base_url, out)
            try:
                asyncio.run(_send(url, WARM))
                _toggle(proc.pid, True)
                asyncio.run(_send(url, n))
                _toggle(proc.pid, False)
            finally:
                proc.terminate()
                proc.wait(120)
            print(f"{what:<40} {_total(out) / n:>12,.0f} instructions per request (serving process)")


# --- in-process variants -------------------------------------------------------------------

async def _client(variant: str, upstream: str, n: int) -> None:
    from squirrel_models import AIRequest, ModelManager

    body = json.dumps(bg.BODY).encode()
    cfg = bg._config(upstream)
    gateway = cfg.pop("gateway")
    if variant in ("bare", "parse", "json"):
        del cfg["budget"]
    close: Any = None
    if variant == "plain":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        headers = {"content-type": "application/json", "authorization": f"Bearer {bg.KEY}"}

        async def call() -> None:
            async with session.post(upstream + "/chat/completions", data=body, headers=headers) as r:
                data = json.loads(await r.read())
                assert r.status == 200 and data["choices"], data

        close = session.close
    elif variant == "app":
        from squirrel_models_gateway import build
        from squirrel_models_gateway.disconnect import DISCONNECT_HOOK

        app, _ = build({**cfg, "gateway": gateway})
        lifespan = app.state.gateway.lifespan()
        await lifespan.__aenter__()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "root_path": "", "query_string": b"",
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), DISCONNECT_HOOK: None,
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                             (b"authorization", f"Bearer {bg.KEY}".encode()),
                             (b"content-length", str(len(body)).encode())]}

        async def call() -> None:
            pending = [{"type": "http.request", "body": body, "more_body": False}]
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return pending.pop()  # the protocol's hook watches the client: no second call

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await app(dict(scope), receive, send)
            assert sent[0]["status"] == 200, sent

        async def close() -> None:
            await lifespan.__aexit__(None, None, None)
    else:
        mm = ModelManager(cfg)
        await mm.start()
        once = AIRequest.from_openai(json.loads(body))

        async def call() -> None:
            if variant == "bare":
                await mm.complete(once)
                return
            response = await mm.complete(AIRequest.from_openai(json.loads(body), budget_key="bench"))
            if variant != "parse":
                json.dumps(response.to_openai())

        close = mm.aclose
    try:
        for _ in range(WARM):
            await call()
        _toggle(os.getpid(), True)
        for _ in range(n):
            await call()
        _toggle(os.getpid(), False)
    finally:
        await close()


def client(variants: list[str], n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            out = os.path.join(tmp, "callgrind.out")
            subprocess.run([*_CALLGRIND, f"--callgrind-out-file={out}", sys.executable, __file__,
                            "--client-child", variant, str(n)], check=True,
                           stderr=subprocess.DEVNULL)
            print(f"{variant:<10} {_total(out) / n:>12,.0f} instructions per request (in-process)")


def main(argv: list[str]) -> None:
    n = 500
    if "--n" in argv:
        i = argv.index("--n")
        n = int(argv[i + 1])
        del argv[i:i + 2]
    if len(argv) >= 2 and argv[0] == "server":
        server(argv[1:], n)
    elif len(argv) >= 2 and argv[0] == "client":
        client(argv[1:], n)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--client-child":
        with StubServer() as stub:
            asyncio.run(_client(sys.argv[2], stub.base_url, int(sys.argv[3])))
    else:
        main(sys.argv[1:])
