"""The request path configured as a user would, against plain aiohttp, interleaved in one process.

A fast OpenAI-compatible server on loopback (its own process) answers as OpenAI does: a full
``chat.completion`` body (ids, fingerprint, usage details) and, streamed, ``chat.completion.chunk``
events with a usage chunk at the end. The library is configured as a user would: one ``openai``
provider for ``gpt-4o-mini`` with explicit prices and ``discover = false``, default scoring, no
budget, no OpenTelemetry SDK; each request is built from message dicts (a system prompt and a
short conversation). Variants: a memory budget (two limits), the OpenTelemetry SDK with an
in-memory metric reader (``meter_provider=``), and the openai provider alone (its ``complete``
and ``stream`` called directly, no manager: the wire side's cost apart from the manager's).
The baseline, plain ``aiohttp``, builds the same body from the same dicts, posts it, decodes
the answer and reads its text and usage.

Figures, every one beside the baseline measured in the same run:

- added p50 per request, paired: the clients take turns request by request; the median of
  (client - the plain call just before it);
- client CPU per request (this process's CPU time, sequential and at 64 concurrent);
- throughput at 64 concurrent as a ratio to plain aiohttp (median of interleaved rounds);
- a whole stream (60 chunks) p50, one stream per client in turn;
- picking a model among 1,000 (``get_model`` with default weights) p50/p99, and a request
  through 1,000 models against one through one model;
- import of the API + the openai plugin, and RSS after it, against ``import aiohttp``
  (fresh subprocesses, interleaved).

Run ``python benchmarks/bench_realistic.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import median, percentile, ratio, target, time_calls  # noqa: E402

CONCURRENCY = 64
STREAM_CHUNKS = 60
MODEL = "gpt-4o-mini"
MAX_TOKENS = 256

#: What a caller holds: OpenAI-style message dicts.
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant for a small online bookshop. "
                                  "Answer briefly and politely; recommend at most three books."},
    {"role": "user", "content": "Hello! I liked The Left Hand of Darkness and Piranesi. "
                                "What should I read next?"},
    {"role": "assistant", "content": "You might enjoy The Dispossessed, also by Ursula K. Le Guin, "
                                     "or Susanna Clarke's Jonathan Strange & Mr Norrell."},
    {"role": "user", "content": "Something shorter, please, under 300 pages, ideally a standalone "
                                "novel that I can finish over a weekend."},
]

_TEXT = ("Try The Buried Giant by Kazuo Ishiguro, A Wizard of Earthsea by Ursula K. Le Guin, or "
         "The Ocean at the End of the Lane by Neil Gaiman: each is a short standalone novel with "
         "the quiet, strange atmosphere you enjoyed in Piranesi.")
_USAGE = {"prompt_tokens": 97, "completion_tokens": 52, "total_tokens": 149,
          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                        "accepted_prediction_tokens": 0,
                                        "rejected_prediction_tokens": 0}}
_ANSWER = json.dumps({
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion",
    "created": 1741570283, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": _TEXT, "refusal": None,
                                         "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": _USAGE, "service_tier": "default", "system_fingerprint": "fp_06737a9306"}).encode()
_HEADERS = (b"Content-Type: application/json\r\nDate: Wed, 02 Dec 2026 02:00:00 GMT\r\n"
            b"openai-organization: user-bench\r\nopenai-processing-ms: 312\r\n"
            b"openai-version: 2020-10-01\r\nx-ratelimit-limit-requests: 30000\r\n"
            b"x-ratelimit-remaining-requests: 29999\r\nx-request-id: req_5c2d0e1b9f6e4d8a\r\n")


def _stream_body() -> bytes:
    head = {"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk",
            "created": 1741570283, "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_06737a9306"}
    words = _TEXT.split(" ")
    pieces = [(" " if i else "") + words[i % len(words)] for i in range(STREAM_CHUNKS)]
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "",
                                                            "refusal": None},
                                    "logprobs": None, "finish_reason": None}], "usage": None}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": None,
                                     "finish_reason": None}], "usage": None} for p in pieces]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}], "usage": None})
    events.append({**head, "choices": [], "usage": {**_USAGE, "completion_tokens": STREAM_CHUNKS}})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


# --- the server (runs in a child process) ------------------------------------------------


def split_message(buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(head, body, the rest) of the first HTTP/1.1 message in ``buf`` once it is whole (its
    body framed by ``Content-Length``, none without it), else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end]
    lower = head.lower()
    i = lower.find(b"content-length:")
    stop = lower.find(b"\r\n", i)
    n = int(lower[i + 15:stop if stop > 0 else None]) if i >= 0 else 0
    if len(buf) < end + 4 + n:
        return None
    return head, buf[end + 4:end + 4 + n], buf[end + 4 + n:]


class _Server(asyncio.Protocol):
    plain = (b"HTTP/1.1 200 OK\r\n" + _HEADERS + b"Content-Length: %d\r\n\r\n" % len(_ANSWER)
             + _ANSWER)
    _sse = _stream_body()
    streamed = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Content-Length: %d\r\n\r\n" % len(_sse)) + _sse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (message := split_message(self.buf)) is not None:
            _, body, self.buf = message
            streamed = b'"stream":true' in body or b'"stream": true' in body
            self.transport.write(self.streamed if streamed else self.plain)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Server, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class Server:
    """The server in a child process; ``base_url`` ends in ``/v1``."""

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.base_url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- the clients ---------------------------------------------------------------------------

Call = Callable[[bool], Awaitable[str]]  # stream? -> the answer's text
Close = Callable[[], Awaitable[None]]


async def plain_aiohttp(base: str) -> tuple[Call, Close]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    url = base + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}

    async def call(stream: bool) -> str:
        body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        async with session.post(url, data=json.dumps(body), headers=headers) as r:
            if not stream:
                data = json.loads(await r.read())
                usage = data["usage"]
                assert usage["total_tokens"]
                return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]
            parts = []
            async for raw in r.content:
                line = raw.strip()
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    event = json.loads(line[6:])
                    for choice in event["choices"]:
                        parts.append(choice["delta"].get("content") or "")
            return "".join(parts)

    return call, session.close


def config(base: str, models: int = 1, budget: bool = False) -> dict[str, Any]:
    """The configuration a user would write: explicit prices, no discovery, defaults else."""
    entries = [{"name": MODEL, "price": {"input": "0.15", "output": "0.60"},
                "context_window": 128_000}]
    entries += [{"name": f"{MODEL}-ft-{i:04d}",
                 "price": {"input": str(0.15 + (i % 40) / 100), "output": str(0.6 + (i % 25) / 10)},
                 "context_window": (8_192, 32_768, 128_000)[i % 3]}
                for i in range(models - 1)]
    cfg: dict[str, Any] = {"providers": [{
        "name": "openai", "type": "openai", "discover": False,
        "options": {"base_url": base, "api_key_env": "BENCH_OPENAI_KEY"},
        "models": entries}]}
    if budget:
        cfg["budget"] = {"limits": [{"scope": "global", "period": "month", "limit": "1000000"},
                                    {"scope": "provider:openai", "period": "day", "limit": "100000"}]}
    return cfg


async def squirrel(base: str, *, models: int = 1, budget: bool = False, otel: bool = False,
                   from_openai: bool = False) -> tuple[Call, Close]:
    from squirrel_models import AIRequest, Message, ModelManager

    os.environ.setdefault("BENCH_OPENAI_KEY", "sk-bench")
    kw: dict[str, Any] = {}
    if otel:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        kw["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
    mm = ModelManager(config(base, models, budget), **kw)
    await mm.start()
    model = f"openai/{MODEL}"

    async def call(stream: bool) -> str:
        if from_openai:  # what a caller holding an OpenAI-format body does (and the gateway)
            request = AIRequest.from_openai({"messages": MESSAGES, "max_tokens": MAX_TOKENS})
        else:
            request = AIRequest(messages=[Message(m["role"], m["content"]) for m in MESSAGES],
                                max_tokens=MAX_TOKENS)
        if not stream:
            response = await mm.complete(request)
            assert models > 1 or response.model == model
            return response.text
        async with mm.stream(request) as s:
            parts = [c.text async for c in s]
        return "".join(parts)

    return call, mm.aclose


async def provider_alone(base: str) -> tuple[Call, Close]:
    """The wire side alone: the request built from dicts and the openai provider's
    ``complete``/``stream`` called directly (no manager: no selection, deadline, attempts,
    records), to tell its cost from the manager's."""
    from squirrel_models import AIRequest, Message, ModelManager

    os.environ.setdefault("BENCH_OPENAI_KEY", "sk-bench")
    mm = ModelManager(config(base))
    await mm.start()
    provider, card = mm.providers["openai"], mm.models[f"openai/{MODEL}"]

    async def call(stream: bool) -> str:
        request = AIRequest(messages=[Message(m["role"], m["content"]) for m in MESSAGES],
                            max_tokens=MAX_TOKENS)
        if not stream:
            return (await provider.complete(card, request)).text
        return "".join([c.text async for c in provider.stream(card, request)])

    return call, mm.aclose


#: name -> (factory, takes part in the throughput rounds and streams)
CLIENTS: dict[str, tuple[Callable[[str], Awaitable[tuple[Call, Close]]], bool]] = {
    "plain aiohttp": (plain_aiohttp, True),
    "squirrel": (squirrel, True),
    "squirrel, from an OpenAI body": (lambda b: squirrel(b, from_openai=True), True),
    "squirrel, memory budget": (lambda b: squirrel(b, budget=True), True),
    "squirrel, OTel SDK + reader": (lambda b: squirrel(b, otel=True), True),
    "squirrel, 1,000 models": (lambda b: squirrel(b, models=1000), False),
    "openai provider alone": (provider_alone, True),
}


# --- measurements ---------------------------------------------------------------------------


async def _measure(base: str, n_seq: int, n_stream: int, n_conc: int, rounds: int
                   ) -> dict[str, dict[str, float]]:
    opened: dict[str, tuple[Call, Close]] = {}
    try:
        for name, (make, _) in CLIENTS.items():
            opened[name] = await make(base)
        calls = {name: call for name, (call, _) in opened.items()}
        for call in calls.values():  # warm up: connections, tokenizer, caches
            for _ in range(20):
                await call(False)
            await call(True)
        # Sequential, paired: the clients take turns, request by request.
        wall: dict[str, list[float]] = {k: [] for k in calls}
        cpu: dict[str, list[float]] = {k: [] for k in calls}
        clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
        for _ in range(n_seq):
            for name, call in calls.items():
                c0, t0 = cpu_clock(), clock()
                await call(False)
                t1, c1 = clock(), cpu_clock()
                wall[name].append((t1 - t0) * 1e-9)
                cpu[name].append((c1 - c0) * 1e-9)
        streamed = {k: c for k, c in calls.items() if CLIENTS[k][1]}
        stream_s: dict[str, list[float]] = {k: [] for k in streamed}
        for _ in range(n_stream):
            for name, call in streamed.items():
                t0 = time.perf_counter()
                text = await call(True)
                stream_s[name].append(time.perf_counter() - t0)
                assert text, name

        async def burst(call: Call, n: int) -> tuple[float, float]:
            queue = iter(range(n))

            async def worker() -> None:
                for _ in queue:
                    await call(False)

            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return n / (time.perf_counter() - t0), (time.process_time() - c0) / n

        for call in streamed.values():  # fill each pool to 64 connections first
            await burst(call, CONCURRENCY * 4)
        rps: dict[str, list[float]] = {k: [] for k in streamed}
        cpu64: dict[str, list[float]] = {k: [] for k in streamed}
        for _ in range(rounds):
            for name, call in streamed.items():
                r, c = await burst(call, n_conc)
                rps[name].append(r)
                cpu64[name].append(c)
    finally:
        for _, close in opened.values():
            await close()
    plain = wall["plain aiohttp"]
    out: dict[str, dict[str, float]] = {}
    for name in calls:
        paired = [w - p for w, p in zip(wall[name], plain, strict=True)]
        row = {"p50_us": percentile(wall[name], 50) * 1e6, "p99_us": percentile(wall[name], 99) * 1e6,
               "added_p50_paired_us": percentile(paired, 50) * 1e6,
               "cpu_us_per_req_seq": statistics.fmean(cpu[name]) * 1e6}
        if name in streamed:
            row.update({"stream_p50_us": percentile(stream_s[name], 50) * 1e6,
                        "rps_64": median(rps[name]), "cpu_us_per_req_64": median(cpu64[name]) * 1e6})
        out[name] = row
    return out


def _selection(n: int) -> dict[str, float]:
    """``get_model`` among 1,000 models (default weights), request by request; the base URL is
    never called."""
    from squirrel_models import AIRequest, Message, ModelManager

    os.environ.setdefault("BENCH_OPENAI_KEY", "sk-bench")

    async def run() -> dict[str, float]:
        async with ModelManager(config("http://127.0.0.1:9/v1", models=1000)) as mm:
            def pick() -> None:
                request = AIRequest(messages=[Message(m["role"], m["content"]) for m in MESSAGES],
                                    max_tokens=MAX_TOKENS)
                mm.get_model(None, request)

            for _ in range(50):
                pick()
            samples = time_calls(pick, n)
            build = time_calls(lambda: AIRequest(
                messages=[Message(m["role"], m["content"]) for m in MESSAGES], max_tokens=MAX_TOKENS), n)
        return {"p50_us": percentile(samples, 50) * 1e6, "p99_us": percentile(samples, 99) * 1e6,
                "request_build_p50_us": percentile(build, 50) * 1e6}

    return asyncio.run(run())


_PROBE = r"""
import json, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split(":")[1].split()[0]) / 1024
t0 = time.perf_counter()
MODE
r = {"import_ms": (time.perf_counter() - t0) * 1e3, "rss_mb": rss()}
print(json.dumps(r))
"""
_MODES = {
    "import aiohttp": "import aiohttp",
    "API + openai plugin": ("from squirrel_models import AIRequest, Message, ModelManager\n"
                            "import squirrel_models_openai"),
    "... + ModelManager(config)": (
        "from squirrel_models import AIRequest, Message, ModelManager\n"
        "import squirrel_models_openai\nimport os\nos.environ['BENCH_OPENAI_KEY'] = 'sk-bench'\n"
        "mm = ModelManager({'providers': [{'name': 'openai', 'type': 'openai', 'discover': False, "
        "'options': {'base_url': 'http://127.0.0.1:9/v1', 'api_key_env': 'BENCH_OPENAI_KEY'}, "
        "'models': [{'name': 'gpt-4o-mini', 'price': {'input': '0.15', 'output': '0.60'}}]}]})"),
}


def _imports(n: int) -> dict[str, dict[str, float]]:
    """Fresh subprocesses, interleaved; bytecode from a private cache filled by a warm-up."""
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in _MODES}
    with tempfile.TemporaryDirectory(prefix="squirrel-pycache-") as cache:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = cache
        for i in range(n + 1):
            for mode, code in _MODES.items():
                proc = subprocess.run([sys.executable, "-c", _PROBE.replace("MODE", code)],
                                      capture_output=True, text=True, check=True, env=env)
                if i:  # the first round fills the bytecode cache
                    runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {m: {"import_ms": median([r["import_ms"] for r in rs]),
                "rss_mb": median([r["rss_mb"] for r in rs])} for m, rs in runs.items()}


def main(quick: bool = False) -> dict[str, Any]:
    """Measure every client against one server; return the figures (see :func:`report`)."""
    n_seq, n_stream, n_conc, rounds, n_sel, n_imp = (
        (30, 3, 256, 1, 50, 1) if quick else (2000, 100, 3000, 5, 3000, 7))
    with Server() as server:
        clients = asyncio.run(_measure(server.base_url, n_seq, n_stream, n_conc, rounds))
    figures = {"clients": clients, "selection_1000": _selection(n_sel), "imports": _imports(n_imp)}
    _print(figures)
    return figures


TARGET_ADDED_US = 150.0
TARGET_THROUGHPUT = 0.8
TARGET_SELECTION_P99_US = 500.0
TARGET_RSS_MB = 40.0


def report(figures: dict[str, Any], quick: bool) -> dict[str, Any]:
    clients = figures["clients"]
    plain = clients["plain aiohttp"]
    table = []
    for name, r in clients.items():
        row: dict[str, Any] = {
            "client": name, "p50_us": round(r["p50_us"], 1), "p99_us": round(r["p99_us"], 1),
            "added_p50_paired_us": round(r["added_p50_paired_us"], 1),
            "cpu_us_per_req_seq": round(r["cpu_us_per_req_seq"], 1),
            "cpu_vs_plain_seq": ratio(r["cpu_us_per_req_seq"], plain["cpu_us_per_req_seq"])}
        if "rps_64" in r:
            row.update({"rps_64": round(r["rps_64"]),
                        "rps_vs_plain": ratio(r["rps_64"], plain["rps_64"]),
                        "cpu_us_per_req_64": round(r["cpu_us_per_req_64"], 1),
                        "stream_p50_us": round(r["stream_p50_us"], 1),
                        "stream_vs_plain": ratio(r["stream_p50_us"], plain["stream_p50_us"])})
        else:
            row.update({"rps_64": "-", "rps_vs_plain": "-", "cpu_us_per_req_64": "-",
                        "stream_p50_us": "-", "stream_vs_plain": "-"})
        table.append(row)
    sel = figures["selection_1000"]
    imports = figures["imports"]
    base_imp = imports["import aiohttp"]
    import_table = [{"what": m, "import_ms": round(v["import_ms"], 1), "rss_mb": round(v["rss_mb"], 1),
                     "import_vs_aiohttp": ratio(v["import_ms"], base_imp["import_ms"]),
                     "rss_vs_aiohttp": ratio(v["rss_mb"], base_imp["rss_mb"])}
                    for m, v in imports.items()]
    sq = clients["squirrel"]
    targets = [
        target("squirrel added p50 per request over plain aiohttp (paired)",
               sq["added_p50_paired_us"], TARGET_ADDED_US, "us", quick=quick),
        target("squirrel throughput at 64 concurrent / plain aiohttp",
               ratio(sq["rps_64"], plain["rps_64"]), TARGET_THROUGHPUT, "x", quick=quick,
               at_least=True),
        target("get_model among 1,000 models, p99", sel["p99_us"], TARGET_SELECTION_P99_US, "us",
               quick=quick),
        target("RSS after importing the API + openai plugin",
               imports["API + openai plugin"]["rss_mb"], TARGET_RSS_MB, "MB", quick=quick),
    ]
    return {
        "title": "The request path in a realistic setup (openai plugin, explicit prices) vs plain aiohttp",
        "table": table,
        "imports": import_table,
        "selection_1000": {k: round(v, 1) for k, v in sel.items()},
        "targets": targets,
        "notes": [
            "one OpenAI-like server in its own process; every client open in one event loop; "
            "sequential requests taken in turns (paired: each minus the plain call just before it); "
            f"{STREAM_CHUNKS}-chunk streams in turns; throughput: median of interleaved rounds at "
            f"{CONCURRENCY} concurrent on warm pools.",
            "squirrel: openai provider, explicit prices, discover = false, default scoring, no "
            "budget, no OpenTelemetry SDK, AIRequest built from message dicts per request.",
            "imports: fresh subprocesses, interleaved, bytecode cached; RSS after the import.",
        ],
    }


def _print(figures: dict[str, Any]) -> None:
    clients = figures["clients"]
    plain = clients["plain aiohttp"]
    print(f"\nrealistic setup (python {sys.version.split()[0]}, pid {os.getpid()})")
    print(f"{'client':<30}{'p50':>8}{'+p50 pr':>9}{'cpu seq':>9}{'cpu@64':>8}{'req/s':>8}"
          f"{'/plain':>7}{'stream':>8}{'/plain':>7}")
    for name, r in clients.items():
        line = (f"{name:<30}{r['p50_us']:>8.0f}{r['added_p50_paired_us']:>+9.0f}"
                f"{r['cpu_us_per_req_seq']:>9.0f}")
        if "rps_64" in r:
            line += (f"{r['cpu_us_per_req_64']:>8.0f}{r['rps_64']:>8.0f}"
                     f"{r['rps_64'] / plain['rps_64']:>7.2f}{r['stream_p50_us']:>8.0f}"
                     f"{r['stream_p50_us'] / plain['stream_p50_us']:>7.2f}")
        print(line)
    sel = figures["selection_1000"]
    print(f"get_model among 1,000 models: p50 {sel['p50_us']:.0f} us, p99 {sel['p99_us']:.0f} us "
          f"(building the AIRequest: {sel['request_build_p50_us']:.1f} us)")
    for m, v in figures["imports"].items():
        print(f"{m:<30} import {v['import_ms']:.0f} ms, RSS {v['rss_mb']:.1f} MB")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        asyncio.run(_serve())
    else:
        main(quick="--quick" in sys.argv)
