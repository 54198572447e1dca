"""A fake, misbehaving OpenAI-compatible server on 127.0.0.1: test an HTTP provider plugin
without a real service (the behaviours are the ones the project's own reliability tests use).

It speaks just enough HTTP/1.1 (keep-alive, Content-Length requests, chunked streams) over raw
asyncio streams in a background thread with its own event loop, so it shares nothing with the
client under test (asyncio or trio) and can misbehave at the socket level: hang, reset, stop
mid-stream.

The behaviour of each ``POST .../chat/completions`` is chosen, first match wins, by:

1. a queued script for the request's model (:meth:`FakeServer.script`), one step per request;
2. the ``X-Behaviour`` request header;
3. the model name, as ``behaviour`` or ``behaviour:arg`` (``rate-limit:0.2``);
4. ``ok``.

Behaviours (``arg`` in brackets):

==================  =======================================================================
``ok``              a normal answer with usage (streams: the usage chunk if asked for it);
                    it honours ``max_tokens`` (one word a token) and ``stop``
``no-usage``        a normal answer; streams carry no usage (like the llama.cpp server)
``slow`` [s]        answer after ``s`` seconds (default 0.5)
``trickle`` [s]     stream one word every ``s`` seconds (default 0.3)
``hang``            read the request, never answer (until the client or the server closes)
``hang-stream``     send headers and one chunk, then hang
``reset``           read the request, then reset the connection (RST)
``reset-stream``    send two chunks, then reset the connection
``close``           read the request, close the connection cleanly without answering
``truncate``        stream two chunks, then end the body without ``[DONE]``
``stream-error``    stream one chunk, then an ``{"error": ...}`` event (a server error)
``rate-limit`` [s]  429 with ``Retry-After: s`` (default 1)
``rate-reset`` [s]  429 with ``x-ratelimit-reset-requests: {s}s`` and remaining 0
``quota``           429 ``insufficient_quota``
``limited`` [n.w]   at most n requests per w seconds (a fixed window from the first), like a
                    provider: every answer carries ``x-ratelimit-limit-requests``,
                    ``-remaining-requests`` and ``-reset-requests``; beyond n, a 429 with
                    them and ``Retry-After`` (``limited_429s`` counts those)
``error`` [code]    that HTTP status with an OpenAI error body (default 500)
``malformed``       200 with a body that is not JSON
``malformed-stream`` a stream whose event is not JSON
``no-choices``      200 with a JSON object without choices
``context``         400 ``context_length_exceeded`` (window 2048, requested 5000)
``filter``          400 ``content_filter``
``filter-finish``   200 with empty content and ``finish_reason: content_filter``
``auth``            401 whose message echoes the Authorization header (servers do)
``echo``            400 whose message echoes every request header (a leak test)
``leak`` [where.form] echo the request's key (from its ``Authorization`` header) in the answer:
                    ``where`` is ``message`` (400), ``type`` (401), ``code`` (429),
                    ``header`` (500 with ``X-Echo``), ``status`` (502, reason phrase),
                    ``stream`` (an error event after one chunk), ``body`` (a 200 answer
                    whose text is the echo); ``form`` is
                    :data:`LEAK_FORMS` (whole, fragments, escaped): ``leak:type.minus2``
``tool-call``       a call of the request's first tool (``get_weather`` if none) with
                    :data:`TOOL_ARGUMENTS`, ``finish_reason: tool_calls``; streams send the
                    id and name first, then the arguments in three fragments
``raw`` [n]         the n-th body given to :meth:`FakeServer.serve`, as it is
==================  =======================================================================

``GET .../models`` lists ``models`` (default ``["ok"]``; ``leak-models.<form>`` lists the key).
Counters: ``requests`` (all chat
requests), ``by_model``, ``by_prompt`` (keyed by the last message's content, so a test that
gives each logical request its own prompt counts the upstream attempts of each), ``behaviours``
(what was played), ``connections`` (accepted), ``open_connections`` and
``max_open_connections``; ``headers_seen`` keeps
each request's headers and ``payloads_seen`` each chat request's JSON body.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["ANSWER", "LEAK_FORMS", "LEAK_PLACES", "PROMPT_TOKENS", "TOOL_ARGUMENTS", "TOOL_CALL_ID", "FakeServer",
           "FaultyServer", "faulty_fixtures", "faulty_server", "leak_behaviours", "leak_form"]

ANSWER = "Hello from the faulty server, nice to meet you."
TOOL_CALL_ID = "call_faulty_1"
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'

#: The prompt tokens every answer reports (``usage.prompt_tokens``), whatever the prompt.
PROMPT_TOKENS = 12
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 422: "Unprocessable Entity", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _last_content(payload: dict[str, Any]) -> str:
    messages = payload.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    return str(last.get("content", "")) if isinstance(last, dict) else ""


#: How ``leak`` shows a key: whole, fragments, and the escaped forms servers and libraries use.
LEAK_FORMS: dict[str, Any] = {
    "whole": lambda k: k,
    "minus2": lambda k: k[:-2],
    "head": lambda k: k[: len(k) // 2],
    "tail": lambda k: k[3:],
    "middle": lambda k: k[4:-4],
    "json": lambda k: json.dumps(k + "\n")[1:-1],
    "repr": lambda k: repr(k + "\n"),
    "url": lambda k: urllib.parse.quote(f"Bearer {k}", safe=""),
    "plus": lambda k: urllib.parse.quote_plus(f"key={k}&x=1"),
    "basic": lambda k: base64.b64encode(f"user:{k}".encode()).decode(),
    "basic1": lambda k: base64.b64encode(f"u:{k}".encode()).decode(),
    "split": lambda k: k[:10] + "\n" + k[10:],
}
LEAK_PLACES = ("message", "type", "code", "header", "status", "stream", "body")


def leak_behaviours(*, every: bool = False, body: bool = False) -> list[str]:
    """``leak:<place>.<form>`` behaviours: every place with every form, or (the default) each
    form in two places, each place with four forms; ``body`` adds answers echoing the key."""
    places = [p for p in LEAK_PLACES if body or p != "body"]
    forms = list(LEAK_FORMS)
    if every:
        return [f"leak:{p}.{f}" for p in places for f in forms]
    n = len(places)
    return sorted({f"leak:{places[(j + k) % n]}.{form}" for j, form in enumerate(forms) for k in (0, n // 2)})


def leak_form(key: str, form: str) -> str:
    """``key`` shown the way ``form`` (a name of :data:`LEAK_FORMS`) says."""
    return str(LEAK_FORMS[form](key))


def _error(message: str, etype: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}}).encode()


class FakeServer:
    """The server. Use as a context manager (or :meth:`start`/:meth:`stop`); ``base_url``
    ends in ``/v1``. With ``tls`` (a server-side :class:`ssl.SSLContext`) it serves HTTPS."""

    def __init__(self, models: Iterable[str] = ("ok",), answer: str = ANSWER, *, port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.models = list(models)
        self.answer = answer
        self.port = port  # 0: any free port (the one taken is here once started)
        self.tls = tls  # a server-side context: served over TLS, at an https:// base_url
        self.requests = 0
        self.by_model: collections.Counter[str] = collections.Counter()
        self.by_prompt: collections.Counter[str] = collections.Counter()
        self.behaviours: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self.payloads_seen: list[dict[str, Any]] = []
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self._scripts: dict[str, collections.deque[str]] = {}
        self._raw: dict[int, tuple[int, str, bytes, dict[str, str] | None]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping: asyncio.Event | None = None
        self._windows: dict[str, tuple[float, int]] = {}  # ``limited``: model -> (start, used)
        self.limited_429s = 0
        self.error: OSError | None = None

    # --- control ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}/v1"

    def script(self, model: str, *behaviours: str) -> FakeServer:
        """Queue ``behaviours`` for the next requests to ``model`` (then back to the default)."""
        with self._lock:
            self._scripts.setdefault(model, collections.deque()).extend(behaviours)
        return self

    def serve(self, model: str, body: bytes, *, status: int = 200,
              content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> FakeServer:
        """Answer the next request to ``model`` with exactly ``body`` (any bytes: a fuzzed
        answer, a stream of events with ``content_type="text/event-stream"``), with
        ``headers`` added to the answer's (a ``Set-Cookie``, rate-limit headers)."""
        with self._lock:
            n = len(self._raw) + 1
            while n in self._raw:
                n += 1
            self._raw[n] = (status, content_type, body, headers)
            self._scripts.setdefault(model, collections.deque()).append(f"raw:{n}")
        return self

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_model.clear()
            self.by_prompt.clear()
            self.behaviours.clear()
            self.headers_seen.clear()
            self.payloads_seen.clear()
            self.max_open_connections = self.open_connections
            self.connections = 0
            self._windows.clear()
            self.limited_429s = 0

    def start(self) -> FakeServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="faulty-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("faulty server did not start")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the server ------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self.tls)
        except OSError as exc:  # the port is taken: say so to start(), which waits for ready
            self.error = exc
            ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopping.wait()
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            self.open_connections += 1
            self.max_open_connections = max(self.max_open_connections, self.open_connections)
        self._writers.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                keep = await self._handle(*request, reader, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with self._lock:
                self.open_connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader
                            ) -> tuple[str, str, dict[str, str], bytes] | None:
        line = await reader.readline()
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        body = await reader.readexactly(n) if n else b""
        return method, path, headers, body

    def _choose(self, headers: dict[str, str], model: str) -> str:
        with self._lock:
            q = self._scripts.get(model)
            if q:
                return q.popleft()
        return headers.get("x-behaviour") or model or "ok"

    async def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            key = headers.get("authorization", "").removeprefix("Bearer ")
            ids = [leak_form(key, m.partition(".")[2]) if m.startswith("leak-models.") else m
                   for m in self.models]  # a listing that echoes the key as a model id
            data = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "faulty"}
                                               for m in ids]}
            await self._send(writer, 200, json.dumps(data).encode())
            return True
        if not path.rstrip("/").endswith("/chat/completions"):
            await self._send(writer, 404, _error("no such route", "invalid_request_error"))
            return True
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            await self._send(writer, 400, _error("body is not JSON", "invalid_request_error"))
            return True
        model = str(payload.get("model", ""))
        behaviour = self._choose(headers, model)
        with self._lock:
            self.requests += 1
            self.by_model[model] += 1
            self.by_prompt[_last_content(payload)] += 1
            self.behaviours.append(behaviour)
            self.headers_seen.append(dict(headers))
            self.payloads_seen.append(payload)
        name, _, arg = behaviour.partition(":")
        stream = bool(payload.get("stream"))
        usage_wanted = bool((payload.get("stream_options") or {}).get("include_usage"))
        return await self._play(name, arg, stream, usage_wanted, payload, headers, reader, writer)

    async def _play(self, name: str, arg: str, stream: bool, usage_wanted: bool, payload: dict[str, Any],
                    headers: dict[str, str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                    ) -> bool:
        model = str(payload.get("model", ""))
        words = _words(self.answer)
        max_tokens = payload.get("max_tokens") or payload.get("max_completion_tokens")
        if isinstance(max_tokens, int):
            words = words[:max_tokens]
        stop = payload.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        text = "".join(words)
        cut = min((i for i in (text.find(s) for s in stops if isinstance(s, str) and s) if i >= 0), default=-1)
        if cut >= 0:  # like OpenAI: the answer ends before the first stop sequence, which is not sent
            words = _words(text[:cut]) if cut else []
        if name == "raw":
            with self._lock:
                status, content_type, raw, extra = self._raw.pop(int(arg))
            await self._send(writer, status, raw, extra, content_type=content_type)
            return True
        if name == "hang":
            await self._hang(reader)
            return False
        if name in ("reset", "close"):
            if name == "reset":
                self._reset(writer)
            return False
        if name == "rate-limit":
            await self._send(writer, 429, _error("Rate limit reached", "requests", "rate_limit_exceeded"),
                             {"Retry-After": arg or "1"})
            return True
        if name == "rate-reset":
            await self._send(writer, 429, _error("Rate limit reached", "requests", "rate_limit_exceeded"),
                             {"x-ratelimit-reset-requests": f"{arg or '1'}s",
                              "x-ratelimit-remaining-requests": "0"})
            return True
        if name == "limited":
            return await self._limited(arg, model, words, writer)
        if name == "quota":
            await self._send(writer, 429, _error("You exceeded your current quota", "insufficient_quota",
                                                 "insufficient_quota"))
            return True
        if name == "error":
            status = int(arg or 500)
            await self._send(writer, status, _error(f"scripted error {status}", "server_error"))
            return True
        if name == "malformed":
            await self._send(writer, 200, b"{this is not json")
            return True
        if name == "no-choices":
            await self._send(writer, 200, json.dumps({"id": "x", "object": "chat.completion"}).encode())
            return True
        if name == "context":
            msg = ("This model's maximum context length is 2048 tokens. However, you requested 5000 "
                   "tokens (4990 in the messages, 10 in the completion).")
            await self._send(writer, 400, _error(msg, "invalid_request_error", "context_length_exceeded"))
            return True
        if name == "filter":
            await self._send(writer, 400, _error("The response was filtered", "invalid_request_error",
                                                 "content_filter"))
            return True
        if name == "auth":
            key = headers.get("authorization", "")
            await self._send(writer, 401, _error(f"Incorrect API key provided: {key}", "invalid_request_error",
                                                 "invalid_api_key"))
            return True
        if name == "leak":
            where, _, form = arg.partition(".")
            auth = headers.get("authorization", "")
            shown = leak_form(auth.removeprefix("Bearer "), form or "whole")
            if where == "message":
                await self._send(writer, 400, _error(f"bad request, key {shown}", "invalid_request_error"))
            elif where == "type":
                await self._send(writer, 401, _error("Unauthorized", f"key:{shown}", "invalid_api_key"))
            elif where == "code":
                await self._send(writer, 429, _error("slow down", "requests", shown), {"Retry-After": "0"})
            elif where == "header":
                await self._send(writer, 500, _error("see the header", "server_error"),
                                 {"X-Echo": shown.replace("\n", " ")})
            elif where == "status":
                writer.write(f"HTTP/1.1 502 Bad {shown.replace(chr(10), ' ')}\r\nContent-Length: 0\r\n\r\n"
                             .encode("latin-1", "replace"))
                await writer.drain()
            elif where == "stream" and stream:
                return await self._stream("leak-stream", shown, model, words, usage_wanted, reader, writer)
            elif where == "stream":
                await self._send(writer, 200, json.dumps({"error": {"message": shown, "type": shown}}).encode())
            else:  # body: an answer whose text is the echo
                if stream:
                    return await self._stream("leak-body", shown, model, [shown], usage_wanted, reader, writer)
                await self._send(writer, 200, self._completion(model, shown, "stop", 3))
            return True
        if name == "echo":
            await self._send(writer, 400, _error(f"bad request, headers were {headers}", "invalid_request_error"))
            return True
        if name == "slow" and not await self._sleep_unless_closed(reader, float(arg or 0.5)):
            return False  # the client gave up and closed: so do we (open_connections stays true)
        if name == "tool-call":
            return await self._tool_call(model, stream, usage_wanted, payload, writer)
        if name == "filter-finish":
            body = self._completion(model, "", "content_filter", len(words))
            await self._send(writer, 200, body)
            return True
        if not stream:
            if name == "no-usage":
                data = json.loads(self._completion(model, "".join(words), "stop", len(words)))
                del data["usage"]
                await self._send(writer, 200, json.dumps(data).encode())
            else:
                await self._send(writer, 200, self._completion(model, "".join(words), "stop", len(words)))
            return True
        return await self._stream(name, arg, model, words, usage_wanted, reader, writer)

    async def _limited(self, arg: str, model: str, words: list[str],
                       writer: asyncio.StreamWriter) -> bool:
        """``limited:n.w``: n requests per w seconds, announced in every answer's headers."""
        n, _, w = (arg or "3.60").partition(".")
        limit, window = int(n), float(w or 60)
        now = time.monotonic()
        with self._lock:
            start, used = self._windows.get(model, (now, 0))
            if now >= start + window:
                start, used = now, 0
            over = used >= limit
            used += 0 if over else 1
            self._windows[model] = (start, used)
            if over:
                self.limited_429s += 1
        reset = max(start + window - now, 0.0)
        announced = {"x-ratelimit-limit-requests": str(limit),
                     "x-ratelimit-remaining-requests": str(limit - used),
                     "x-ratelimit-reset-requests": f"{reset:.3f}s"}
        if over:
            await self._send(writer, 429, _error("Rate limit reached", "requests",
                                                 "rate_limit_exceeded"),
                             {**announced, "Retry-After": f"{reset:.3f}"})
        else:
            await self._send(writer, 200, self._completion(model, "".join(words), "stop",
                                                           len(words)), announced)
        return True

    async def _stream(self, name: str, arg: str, model: str, words: list[str], usage_wanted: bool,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                     b"Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n")

        async def event(data: str) -> None:
            raw = f"data: {data}\n\n".encode()
            writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            await writer.drain()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return json.dumps({"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        await event(chunk({"role": "assistant", "content": ""}))
        for i, w in enumerate(words):
            if name == "malformed-stream":
                await event("{not json")
            if name == "hang-stream" and i == 1:
                await self._hang(reader)
                return False
            if name == "reset-stream" and i == 2:
                self._reset(writer)
                return False
            if name == "truncate" and i == 2:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
            if name == "leak-stream" and i == 1:
                await event(json.dumps({"error": {"message": f"failed for {arg}", "type": arg, "code": arg}}))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
            if name == "stream-error" and i == 1:
                await event(json.dumps({"error": {"message": "scripted failure mid-stream",
                                                  "type": "server_error", "code": None}}))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
            if name == "trickle":
                await asyncio.sleep(float(arg or 0.3))
            await event(chunk({"content": w}))
        await event(chunk({}, "stop"))
        if usage_wanted and name != "no-usage":
            await event(json.dumps({"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "model": model,
                                    "choices": [], "usage": self._usage(len(words))}))
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _tool_call(self, model: str, stream: bool, usage_wanted: bool, payload: dict[str, Any],
                         writer: asyncio.StreamWriter) -> bool:
        tools = payload.get("tools") or []
        fn = tools[0].get("function", {}) if tools and isinstance(tools[0], dict) else {}
        fname = str(fn.get("name") or "get_weather")
        completion = len(TOOL_ARGUMENTS.split()) + 1
        if not stream:
            message = {"role": "assistant", "content": None,
                       "tool_calls": [{"id": TOOL_CALL_ID, "type": "function",
                                       "function": {"name": fname, "arguments": TOOL_ARGUMENTS}}]}
            await self._send(writer, 200, json.dumps({
                "id": "chatcmpl-faulty", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": self._usage(completion)}).encode())
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                     b"Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n")

        async def event(data: dict[str, Any] | str) -> None:
            raw = f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
            writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            await writer.drain()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        await event(chunk({"role": "assistant", "content": None,
                           "tool_calls": [{"index": 0, "id": TOOL_CALL_ID, "type": "function",
                                           "function": {"name": fname, "arguments": ""}}]}))
        third = len(TOOL_ARGUMENTS) // 3
        for piece in (TOOL_ARGUMENTS[:third], TOOL_ARGUMENTS[third:2 * third], TOOL_ARGUMENTS[2 * third:]):
            await event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        await event(chunk({}, "tool_calls"))
        if usage_wanted:
            await event({"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "model": model,
                         "choices": [], "usage": self._usage(completion)})
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _usage(completion: int) -> dict[str, Any]:
        return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                "total_tokens": PROMPT_TOKENS + completion,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 0}}

    def _completion(self, model: str, text: str, finish: str, completion: int) -> bytes:
        return json.dumps({
            "id": "chatcmpl-faulty", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": self._usage(completion)}).encode()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes,
                    headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        """Wait until the client closes the connection or the server stops."""
        assert self._stopping is not None
        read = asyncio.ensure_future(reader.read())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([read, stop], return_when=asyncio.FIRST_COMPLETED)
        for t in (read, stop):
            t.cancel()
        with contextlib.suppress(BaseException):
            await read

    @staticmethod
    async def _sleep_unless_closed(reader: asyncio.StreamReader, seconds: float) -> bool:
        """Sleep ``seconds``; False at once if the client closes the connection meanwhile."""
        read = asyncio.ensure_future(reader.read(1))
        done, _ = await asyncio.wait([read], timeout=seconds)
        if done:
            return False
        read.cancel()
        with contextlib.suppress(BaseException):
            await read
        return True

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


@contextlib.contextmanager
def faulty_server(models: Iterable[str] = ("ok",)) -> Iterator[FakeServer]:
    """A started :class:`FakeServer`, stopped on exit."""
    with FakeServer(models) as server:
        yield server


def faulty_fixtures(models: Iterable[str] = ("ok",)) -> tuple[Any, Any]:
    """Two fixtures for a ``conftest.py``: ``faulty_session``, a :class:`FakeServer` listing
    ``models`` for the whole session, and ``faulty``, the same server with fresh counters and
    no queued scripts for each test::

        faulty_session, faulty = faulty_fixtures(models=("ok", "no-usage"))
    """

    import pytest

    @pytest.fixture(scope="session", name="faulty_session")
    def session_fixture() -> Iterator[FakeServer]:
        with FakeServer(models) as server:
            yield server

    @pytest.fixture(name="faulty")
    def test_fixture(faulty_session: FakeServer) -> FakeServer:
        faulty_session._scripts.clear()
        faulty_session._raw.clear()
        faulty_session.reset_counters()
        return faulty_session

    return session_fixture, test_fixture


#: The name the project's own tests know it by.
FaultyServer = FakeServer


def main(argv: list[str] | None = None) -> None:
    """``python -m squirrel_models.testing.fake_server [--port P] [MODEL...]``: serve until
    interrupted, for trying a plugin by hand (``squirrel ask`` with its ``base_url``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m squirrel_models.testing.fake_server",
                                     description="A fake OpenAI-style server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="the port (default: any free one)")
    parser.add_argument("models", nargs="*", default=["ok"], help="models GET /models lists")
    args = parser.parse_args(argv)
    with FakeServer(args.models, port=args.port) as server:
        print(f"serving on {server.base_url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
