"""The gateway's ASGI application: OpenAI's chat-completions API over one ``ModelManager``.

Routes (each also without the ``/v1`` prefix, for clients configured without it):

- ``POST /v1/chat/completions``: plain and streamed (server-sent events), tools and tool
  calls. Response headers say which model answered, why, and what it cost.
- ``GET /v1/models``: the models, aliases and ``auto`` the caller's key may use, with
  capabilities, features, limits and prices.
- ``GET /health``: 200 while serving, 503 once shutting down.
- ``GET /metrics``: Prometheus text (the manager's OpenTelemetry metrics and the gateway's).

The chat endpoint is a plain ASGI callable, not a Starlette request handler, answered ahead
of Starlette's middleware and router (``_App``): the manager's stream (a context manager
holding a cancel scope) is opened, iterated and closed in the one task that handles the
request, in a block cut by the request's deadline (disconnect.py: an anyio cancel scope, or
a plain asyncio timer where nothing inside shields itself), which a watcher cuts when the
client disconnects, so the upstream call stops and its reservation is settled for what was
used (see docs/gateway.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio
import attrs
from squirrel_models import AIResponse, ModelManager, ModelRequirements, OpenAIChatRequest
from squirrel_models.deadline import now, running_loop
from squirrel_models.errors import (
    ConfigError,
    DeadlineExceeded,
    MalformedResponse,
    MidStreamError,
    SquirrelError,
    shown,
)
from squirrel_models.fastjson import json_body
from squirrel_models.metrics import DURATION_BUCKETS
from squirrel_models.openai_format import openai_chunk, openai_usage_chunk
from squirrel_models.secrets import redact
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .access import METHODS as _METHODS
from .access import AccessLog
from .config import AUTO, GatewayConfig, VirtualKey
from .disconnect import DISCONNECT_HOOK, DisconnectWatch, cut_block, was_cut
from .errors import GatewayError, encode, error_body, error_for
from .headers import (
    MAX_COST_HEADER,
    MAX_LATENCY_HEADER,
    check_content_type,
    decimal_header,
    float_header,
    header_value,
    request_headers,
    request_id_value,
)
from .keys import KeyRing

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("squirrel_models.gateway")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
#: How long past the request's deadline the gateway may still spend sending its last words
#: (the error event of a stream the deadline cut, a 504): a client that does not read them
#: does not hold the request, its connection or its memory any longer.
SEND_GRACE = 1.0
#: What the 404 answer lists.
SERVED = ("POST /v1/chat/completions, GET /v1/models, GET /v1/models/{model}, GET /health and "
          "GET /metrics")
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
#: The routes' paths without a parameter (a 405 names them).
_FIXED_PATHS = _CHAT_PATHS | {"/v1/models", "/models", "/health", "/metrics"}
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no")]


def _money(amount: Decimal | None) -> str:
    return "unknown" if amount is None else format(amount, "f")


class _JSONResponse(JSONResponse):
    """Starlette's JSON response written by :func:`encode` (never fails on text that is not
    valid Unicode, such as a model name an upstream listed with a lone surrogate)."""

    def render(self, content: Any) -> bytes:
        return encode(content)


class _Disconnected(Exception):
    """The client went away while the answer was being sent."""


class Gateway:
    """The state behind the routes: the manager, the keys, aliases, metrics and the count of
    requests in flight (graceful shutdown waits for it to reach zero)."""

    def __init__(self, manager: ModelManager, config: GatewayConfig, *, registry: Any = None,
                 own_manager: bool = True, meter_provider: Any = None) -> None:
        self.manager, self.config, self.registry = manager, config, registry
        self.own_manager = own_manager
        self.keys = KeyRing(config.keys, allow_anonymous=config.allow_anonymous)
        self.aliases = {k: frozenset(v) for k, v in config.aliases.items()}
        self.in_flight = 0
        self.shutting_down = False
        self.startup_error: BaseException | None = None
        self._requirements: dict[tuple[Any, ...], ModelRequirements] = {}
        self._idle: anyio.Event | None = None
        from opentelemetry import metrics

        meter = (meter_provider or metrics.get_meter_provider()).get_meter("squirrel_models.gateway")
        self._requests = meter.create_counter(
            "squirrel.gateway.requests", unit="{request}",
            description="HTTP requests to the gateway's chat endpoint, by status")
        self._duration = meter.create_histogram(  # (the SDK's default buckets start at 5 s)
            "squirrel.gateway.request.duration", unit="s", explicit_bucket_boundaries_advisory=
            DURATION_BUCKETS, description="Time to the end of each chat request's answer")

    # --- start-up and shutdown -------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        try:
            if self.own_manager:
                await self.manager.start()
            self._check_names()
        except BaseException as exc:
            self.startup_error = exc  # uvicorn logs it and exits; GatewayThread and serve raise it
            if self.own_manager:
                with anyio.CancelScope(shield=True):
                    await self.manager.aclose()
            raise
        try:
            yield
        finally:
            await self.drain()
            if self.own_manager:
                with anyio.CancelScope(shield=True):
                    await self.manager.aclose()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking requests and wait (up to ``timeout``, default the configured
        ``shutdown_timeout``) for those in flight to finish and be settled."""
        self.shutting_down = True
        with anyio.move_on_after(self.config.shutdown_timeout if timeout is None else timeout):
            while self.in_flight:
                self._idle = anyio.Event()
                await self._idle.wait()

    def _check_names(self) -> None:
        """Aliases and keys name models that exist (a typo would refuse every request)."""
        models = self.manager.models
        for name, targets in self.aliases.items():
            for mid in sorted(targets):
                if mid not in models:
                    raise ConfigError(f"no model named {mid!r}", field=f"gateway.aliases.{name}")
        for i, key in enumerate(self.config.keys):
            for mid in sorted(key.models or ()):
                if mid not in models and mid not in self.aliases:
                    raise ConfigError(f"no model or alias named {mid!r}", field=f"gateway.keys[{i}].models")
        self._check_key_scopes()

    def _check_key_scopes(self) -> None:
        """Every ``key:<name>`` budget and rate limit names the budget key of a virtual key (or
        the anonymous one): the gateway's requests carry no other, so a typo would be a limit
        that never applies, spending without the cap it seems to set."""
        known = {k.budget_scope_key for k in self.config.keys}
        if self.config.allow_anonymous and self.config.anonymous_budget_key:
            known.add(self.config.anonymous_budget_key)
        cfg = self.manager.config
        for table, limits in (("budget", cfg.budget.limits), ("rate_limits", cfg.rate_limits.limits)):
            for i, limit in enumerate(limits):
                name = limit.scope.removeprefix("key:")
                if limit.scope.startswith("key:") and name != "*" and name not in known:
                    raise ConfigError(
                        f"no virtual key has the budget key {name!r}, so this limit never "
                        f"applies to the gateway's requests; budget keys: "
                        f"{', '.join(sorted(known)) or '(none)'} (a key's budget_key, else its "
                        "name)", field=f"{table}.limits[{i}].scope")

    # --- routing a request -----------------------------------------------------------------

    def allowed(self, key: VirtualKey | None) -> frozenset[str] | None:
        """The model ids ``key`` may use (None: any): its ``models``, within the configured
        permission ``[requirements] allowed_models`` (which bounds every key: listing or
        accepting a model outside it would promise what no request can reach)."""
        everyone = self.manager.config.requirements.allowed_models
        if key is None or key.models is None:
            return everyone
        out: set[str] = set()
        for name in key.models:
            out |= self.aliases.get(name, {name})
        return frozenset(out) if everyone is None else frozenset(out) & everyone

    def requirements(self, parsed: OpenAIChatRequest, key: VirtualKey | None,
                     headers: Mapping[bytes, bytes]) -> ModelRequirements:
        """What ``parsed`` needs of a model: the configured requirements, pinned to the named
        model, alias or group (``auto``: any the key may use), the features the body asks
        for when the router chooses, and the limits the headers and the key set."""
        base = self.manager.config.requirements
        model = parsed.model
        if model is None:
            raise GatewayError(400, "you must provide a model parameter (a model id, an alias or "
                               "'auto')", param="model", code="missing_model")
        # The same few combinations come again and again: build each once (a fresh
        # ModelRequirements per request costs its validators, and the selector's cache
        # answers an equal one at once). Keyed by everything the result depends on.
        cache_key = (base, id(self.manager.models), model, key.name if key is not None else None,
                     bool(parsed.request.tools), headers.get(MAX_COST_HEADER),
                     headers.get(MAX_LATENCY_HEADER))
        cached = self._requirements.get(cache_key)
        if cached is not None:
            return cached
        result = self._build_requirements(parsed, key, headers, base, model)
        if len(self._requirements) >= 4096:
            self._requirements.clear()
        self._requirements[cache_key] = result
        return result

    def _build_requirements(self, parsed: OpenAIChatRequest, key: VirtualKey | None,
                            headers: Mapping[bytes, bytes], base: ModelRequirements,
                            model: str) -> ModelRequirements:
        allowed = self.allowed(key)
        if model == AUTO:  # a key's own models, else the configured pin (within allowed_models)
            targets = base.models if key is None or key.models is None else allowed
        else:
            named = self.aliases.get(model)
            if named is None:
                if model not in self.manager.models:
                    raise GatewayError(404, f"The model {shown(model)} does not exist: GET /v1/models "
                                       "lists the models, aliases and 'auto'", param="model",
                                       code="model_not_found")
                named = frozenset({model})
            if allowed is not None and not named <= allowed:
                raise GatewayError(403, f"this key may not use {shown(model)}", param="model",
                                   code="model_not_allowed", type="permission_error")
            targets = named
        changes: dict[str, Any] = {"models": targets}
        if allowed is not None:
            # A permission, not a pin: a [fallback.graph] edge may leave the pin, never this.
            changes["allowed_models"] = allowed if base.allowed_models is None \
                else allowed & base.allowed_models
        features = _features(parsed)
        if features and (model == AUTO or model in self.aliases):
            # A model named by id is the caller's choice; the router's own choice needs them.
            changes["required_features"] = base.required_features | features
        ceiling = decimal_header(headers.get(MAX_COST_HEADER), MAX_COST_HEADER)
        if key is not None and key.max_request_cost is not None:
            ceiling = key.max_request_cost if ceiling is None else min(ceiling, key.max_request_cost)
        if ceiling is not None:
            current = base.max_request_cost
            changes["max_request_cost"] = ceiling if current is None else min(current, ceiling)
        latency = float_header(headers.get(MAX_LATENCY_HEADER), MAX_LATENCY_HEADER)
        if latency is not None:
            current_l = base.max_latency_ms
            changes["max_latency_ms"] = latency if current_l is None else min(current_l, latency)
        return attrs.evolve(base, **changes)

    # --- the chat endpoint -----------------------------------------------------------------

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if self.shutting_down:
            await self._send_error(send, GatewayError(503, "the gateway is shutting down",
                                                      type="server_error", code="shutting_down"),
                                   {b"connection": b"close"})
            return
        self.in_flight += 1
        status = 500
        stream = False
        # One deadline per request, from its headers: reading the body, the answer and the
        # sending of it. Past it (and SEND_GRACE for the last words) the request is dropped
        # whatever the client does (a body that never comes, an answer it never reads).
        timeout = self.manager.config.timeout
        deadline = now() + timeout
        started_answer, left = False, timeout

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started_answer
            started_answer = started_answer or message["type"] == "http.response.start"
            await send(message)

        # Two cuts: reading the body by the request's deadline, then answering by SEND_GRACE
        # later (the manager keeps the request's own deadline); the disconnect watcher cuts
        # the second too (``watch.disconnected`` tells which). Each the cheapest construct
        # that is correct for what runs inside it (cut_block).
        watch = DisconnectWatch()
        loop = running_loop()
        try:
            failure: Exception | None = None
            with cut_block(deadline, loop, True) as reading:
                try:
                    headers = request_headers(scope["headers"])
                    key = self.keys.authenticate(headers.get(b"authorization"))
                    check_content_type(headers.get(b"content-type"))
                    body = await self._body(receive, headers)
                    parsed = OpenAIChatRequest.from_openai(
                        body, passthrough=self.config.passthrough,
                        budget_key=key.budget_scope_key if key is not None
                        else self.config.anonymous_budget_key)
                    requirements = self.requirements(parsed, key, headers)
                except Exception as exc:
                    failure = exc
            if was_cut(reading):
                status = 408
                with anyio.move_on_after(SEND_GRACE):
                    status = await self._send_error(send, GatewayError(
                        408, f"the request body did not arrive within the request's {timeout:g} s "
                        "deadline", param="body", code="request_timeout"))
                return
            # The error's answer and a plain answer from a manager whose own deadline is a
            # plain timer run nothing that shields itself; a stream runs the caller's code
            # inside the manager's cancel scope.
            native = failure is not None or (
                not parsed.stream and getattr(self.manager, "_native_deadline", False) is True)
            with cut_block(deadline + SEND_GRACE, loop, native) as bound:
                if failure is not None:
                    status = await self._send_error(tracked, failure)
                    return
                stream = parsed.stream
                left = deadline - now()
                if left > 0:
                    watch.scope = bound
                    status = await self._answer(scope, parsed, requirements, receive, tracked,
                                                left, watch)
            if was_cut(bound) and watch.disconnected:
                status = 499  # nginx's "client closed request", for the metrics
            elif was_cut(bound) or left <= 0:
                status = 504
                if not started_answer:
                    with anyio.move_on_after(SEND_GRACE):
                        await self._send_error(send, DeadlineExceeded(timeout=timeout))
        except anyio.get_cancelled_exc_class():
            # Not one of this request's cuts (they absorb their own): the server cancelled
            # it, its shutdown_timeout run out. The manager has settled it; the client gets
            # the reason in OpenAI's format instead of uvicorn's plain-text 500 (and the log
            # no "Exception in ASGI application"). Not re-raised: nothing above the app waits.
            status = 503
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + SEND_GRACE):
                await self._cut_by_shutdown(send, started_answer, stream)
        except Exception as exc:
            # A fault of the gateway's own past its handlers: still OpenAI's error JSON (the
            # route is served ahead of Starlette's error middleware, whose 500 was plain text).
            if started_answer:
                raise
            with anyio.move_on_after(SEND_GRACE):
                status = await self._send_error(send, exc)
        finally:
            self.in_flight -= 1
            if self._idle is not None and not self.in_flight:
                self._idle.set()
            labels = {"http.response.status_code": status, "squirrel.stream": stream}
            self._requests.add(1, labels)
            self._duration.record(time.perf_counter() - started, labels)

    async def _cut_by_shutdown(self, send: Send, started: bool, stream: bool) -> None:
        error = GatewayError(503, "the gateway is shutting down: the request did not finish "
                             "within its shutdown_timeout", type="server_error",
                             code="shutting_down")
        if not started:
            await self._send_error(send, error, {b"connection": b"close"})
        elif stream:  # the status is sent: the error goes as the stream's last event
            with contextlib.suppress(_Disconnected):
                await _event(send, error_for(error)[1])
                await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer(self, scope: Scope, parsed: OpenAIChatRequest,
                      requirements: ModelRequirements, receive: Receive, send: Send,
                      timeout: float, watch: DisconnectWatch) -> int:
        """Answer within ``timeout`` while ``watch`` waits for the client to disconnect."""
        if DISCONNECT_HOOK in scope:
            # Served by the gateway's own protocol (protocol.py): it calls the watch when the
            # connection is lost, so no task waits in receive() for it.
            scope[DISCONNECT_HOOK] = watch.cut
            try:
                return await self._respond(parsed, requirements, send, timeout)
            finally:
                scope[DISCONNECT_HOOK] = None
        loop = running_loop()
        if loop is None:  # another event loop (trio): the watcher in a task group
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch.run, receive)
                try:
                    return await self._respond(parsed, requirements, send, timeout)
                finally:
                    tg.cancel_scope.cancel()
        # On asyncio a bare task: a task group and its scope cost more than the rest of the
        # gateway's own work per request. The watcher only waits in receive() and cancels
        # the request's scope (anyio's cancellation, so the manager's shielded settlement
        # holds); it is cancelled before this returns, with nothing of its own to clean up.
        task = loop.create_task(watch.run(receive))
        try:
            return await self._respond(parsed, requirements, send, timeout)
        finally:
            task.cancel()

    async def _respond(self, parsed: OpenAIChatRequest, requirements: ModelRequirements,
                       send: Send, timeout: float) -> int:
        try:
            if parsed.stream:
                return await self._stream(parsed, requirements, send, timeout)
            return await self._complete(parsed, requirements, send, timeout)
        except _Disconnected:
            return 499  # nginx's "client closed request", for the metrics

    async def _body(self, receive: Receive, headers: Mapping[bytes, bytes]) -> Any:
        limit = self.config.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise GatewayError(413, f"the request body is larger than {limit} bytes",
                               code="request_too_large")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"the request body is larger than {limit} bytes",
                                   code="request_too_large")
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        try:  # msgspec when installed, json deciding what it refuses (fastjson)
            return json_body(parts[0] if len(parts) == 1 else b"".join(parts), "the request body")
        except MalformedResponse as exc:
            raise GatewayError(400, str(exc), param="body", code="invalid_json") from None

    async def _complete(self, parsed: OpenAIChatRequest, requirements: ModelRequirements,
                        send: Send, timeout: float) -> int:
        try:
            response = await self.manager.complete(parsed.request, requirements, timeout=timeout)
            out = encode(response.to_openai())
            headers = [*_JSON, (b"content-length", str(len(out)).encode()),
                       *self._answer_headers(response)]
        except Exception as exc:
            return await self._send_error(send, exc)
        await _send(send, {"type": "http.response.start", "status": 200, "headers": headers})
        await _send(send, {"type": "http.response.body", "body": out})
        return 200

    def _answer_headers(self, response: AIResponse) -> list[tuple[bytes, bytes]]:
        reason = response.decision.reason() if response.decision is not None else ""
        return [(b"x-squirrel-model", header_value(response.model)),
                (b"x-squirrel-reason", header_value(reason)),
                (b"x-squirrel-cost", _money(response.cost).encode()),
                (b"x-squirrel-attempts", str(len(response.attempts)).encode()),
                (b"x-request-id", request_id_value(response.request_id))]

    async def _stream(self, parsed: OpenAIChatRequest, requirements: ModelRequirements,
                      send: Send, timeout: float) -> int:
        started = False
        try:
            async with self.manager.stream(parsed.request, requirements, timeout=timeout) as s:
                cid = f"chatcmpl-{os.urandom(12).hex()}"
                created, model = int(time.time()), s.model.id
                await _send(send, {"type": "http.response.start", "status": 200, "headers": [
                    *_SSE, (b"x-squirrel-model", header_value(model)),
                    (b"x-squirrel-reason", header_value(s.decision.reason()))]})
                started = True
                first, finished = True, False
                try:
                    async for chunk in s:
                        if not (chunk.text or chunk.tool_calls or chunk.finish_reason or first):
                            continue  # a usage-only chunk: sent at the end if asked for
                        finished = finished or chunk.finish_reason is not None
                        await _event(send, openai_chunk(chunk, id=cid, model=model,
                                                        created=created, role=first))
                        first = False
                except MidStreamError as exc:
                    await _event(send, error_for(exc)[1])
                    await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})
                    return 200
            response = s.response
            if not finished:
                from squirrel_models import StreamChunk

                reason = (response.finish_reason if response is not None else None) or "stop"
                await _event(send, openai_chunk(StreamChunk(finish_reason=reason), id=cid,
                                                model=model, created=created))
            if response is not None:
                if parsed.include_usage:
                    usage = openai_usage_chunk(response.usage, id=cid, model=model, created=created)
                    usage["usage"]["cost_usd"] = _money(response.cost)  # like OpenRouter's usage.cost
                    await _event(send, usage)
                await _send(send, {"type": "http.response.body",
                                   "body": f": squirrel cost={_money(response.cost)} "
                                           f"attempts={len(response.attempts)}\n\n".encode(),
                                   "more_body": True})
            await _send(send, {"type": "http.response.body", "body": b"data: [DONE]\n\n",
                               "more_body": False})
            return 200
        except _Disconnected:
            raise
        except Exception as exc:
            if not started:
                return await self._send_error(send, exc)
            # After the first event the status is sent: the error goes as an event.
            await _event(send, error_for(exc)[1])
            await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})
            return error_for(exc)[0]

    async def _send_error(self, send: Send, exc: BaseException,
                          extra: Mapping[bytes, bytes] | None = None) -> int:
        if isinstance(exc, _Disconnected):
            return 499
        status, body, headers = error_for(exc)
        if status >= 500:
            log.warning("chat request failed with %d: %s: %s", status, type(exc).__name__,
                        redact(str(exc)) if isinstance(exc, SquirrelError) else "(internal)")
        out = encode(body)
        hdrs = [*_JSON, (b"content-length", str(len(out)).encode()),
                *((k.encode(), v.encode()) for k, v in headers.items()),
                *(extra or {}).items()]
        if status == 401:
            hdrs.append((b"www-authenticate", b'Bearer realm="squirrel-models"'))
        try:
            await _send(send, {"type": "http.response.start", "status": status, "headers": hdrs})
            await _send(send, {"type": "http.response.body", "body": out})
        except _Disconnected:
            return 499
        return status

    # --- the other routes ------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        try:
            key = self.keys.authenticate(request_headers(request.scope["headers"]).get(b"authorization"))
        except GatewayError as exc:
            status, body, _ = error_for(exc)
            return _JSONResponse(body, status)
        return _JSONResponse({"object": "list", "data": self.model_entries(key)})

    async def retrieve_model(self, request: Request) -> Response:
        """``GET /v1/models/{id}`` (an OpenAI SDK's ``models.retrieve``): the entry the list
        has, or a 404 for a model the key may not use, as for one that does not exist."""
        wanted = request.path_params["model"]
        try:
            key = self.keys.authenticate(request_headers(request.scope["headers"]).get(b"authorization"))
            for entry in self.model_entries(key):
                if entry["id"] == wanted:
                    return _JSONResponse(entry)
            # The id is not echoed: it is part of the path, where a client may have pasted
            # a key the gateway cannot know to redact (as for an unknown path).
            raise GatewayError(404, "The model does not exist or this key may not use it (the "
                               "id is not shown): GET /v1/models lists those it may",
                               param="model", code="model_not_found")
        except GatewayError as exc:
            status, body, _ = error_for(exc)
            return _JSONResponse(body, status)

    def model_entries(self, key: VirtualKey | None) -> list[dict[str, Any]]:
        """What ``GET /v1/models`` lists to ``key``: its models, aliases and ``auto``."""
        allowed = self.allowed(key)
        disabled = self.manager.disabled
        data: list[dict[str, Any]] = []
        for card in sorted(self.manager.models.values(), key=lambda c: c.id):
            if card.id in disabled or (allowed is not None and card.id not in allowed):
                continue
            price = card.price
            data.append({
                "id": card.id, "object": "model", "created": 0, "owned_by": card.provider,
                "capabilities": sorted(card.capabilities), "features": sorted(card.features),
                "context_window": card.context_window, "max_output_tokens": card.max_output_tokens,
                "pricing": None if price is None else {
                    "input_per_million_usd": _money(price.input),
                    "output_per_million_usd": _money(price.output),
                    "cached_input_per_million_usd": None if price.cached_input is None
                    else _money(price.cached_input)},
                "quality": card.quality, "latency_ms": card.latency_ms,
            })
        for name, targets in sorted(self.aliases.items()):
            if allowed is None or targets <= allowed:
                data.append({"id": name, "object": "model", "created": 0, "owned_by": "squirrel-models",
                             "alias_of": sorted(targets)})
        data.append({"id": AUTO, "object": "model", "created": 0, "owned_by": "squirrel-models",
                     "alias_of": sorted(allowed) if allowed is not None else None})
        return data

    async def health(self, request: Request) -> Response:
        if self.shutting_down:
            return _JSONResponse({"status": "shutting_down", "in_flight": self.in_flight}, 503)
        return _JSONResponse({"status": "ok", "models": len(self.manager.models),
                             "in_flight": self.in_flight})

    async def metrics(self, request: Request) -> Response:
        registry = self.registry
        if registry is None:
            return _JSONResponse(error_body("metrics are not enabled ([gateway] metrics)",
                                           "invalid_request_error", "not_found"), 404)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _ChatEndpoint:
    """The chat route as a plain ASGI app (Starlette calls an instance with scope, receive,
    send; a function would get a Request)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.chat(scope, receive, send)


async def _send(send: Send, message: MutableMapping[str, Any]) -> None:
    try:
        await send(message)
    except OSError as exc:  # uvicorn raises ClientDisconnected (an OSError) once it is gone
        raise _Disconnected from exc


async def _event(send: Send, data: Mapping[str, Any]) -> None:
    await _send(send, {"type": "http.response.body", "body": b"data: " + encode(dict(data)) + b"\n\n",
                       "more_body": True})


def _features(parsed: OpenAIChatRequest) -> frozenset[str]:
    """API features the body asks of a model when the router chooses (``auto``, a group):
    tools. (What the request itself needs, images and a JSON response format, the manager
    adds to every request's requirements: ``AIRequest.needs``.)"""
    return frozenset({"tools"}) if parsed.request.tools else frozenset()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods in OpenAI's error JSON too (Starlette's are plain text)."""
    status = getattr(exc, "status_code", 404)
    # Neither an unknown path nor an unknown method is echoed: a client may have pasted its
    # key there, and the gateway knows only its own keys' hashes (so it cannot redact one).
    # Nor the path of a route with a parameter (GET /v1/models/{model}): the same paste.
    method = request.method if request.method in _METHODS else "(other method)"
    path = request.url.path
    message = (f"Unknown request URL: {method} (the path is not shown). This gateway serves "
               f"{SERVED}." if status == 404
               else f"Method {method} is not allowed on "
                    f"{path if path in _FIXED_PATHS else 'this path (it is not shown)'}")
    headers = dict(getattr(exc, "headers", None) or {})
    return _JSONResponse(error_body(message, "invalid_request_error",
                                   "unknown_url" if status == 404 else "method_not_allowed"),
                        status, headers=headers)


def create_app(manager: ModelManager, config: GatewayConfig, *, registry: Any = None,
               own_manager: bool = True, meter_provider: Any = None) -> Starlette:
    """The gateway's ASGI app over ``manager``. ``registry``: the Prometheus registry served
    at ``/metrics`` (None: no metrics route) and ``meter_provider`` the one the gateway's own
    metrics go to (None: the global one). ``own_manager``: the app starts the manager and
    closes it at shutdown, after the requests in flight have ended."""
    gw = Gateway(manager, config, registry=registry, own_manager=own_manager,
                 meter_provider=meter_provider)
    chat = _ChatEndpoint(gw)
    routes: Iterable[Route] = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", gw.list_models, methods=["GET"]),
        Route("/models", gw.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", gw.retrieve_model, methods=["GET"]),
        Route("/models/{model:path}", gw.retrieve_model, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/metrics", gw.metrics, methods=["GET"]),
    ]
    routes = list(routes)
    paths = [r.path for r in routes]
    access = [Middleware(AccessLog, paths=paths)] if config.access_log else []
    app = _App(routes=routes, lifespan=gw.lifespan, middleware=access,
               exception_handlers={404: _http_error, 405: _http_error})
    app.chat = AccessLog(chat, paths=paths) if config.access_log else chat
    # A path with a trailing slash is an unknown URL (OpenAI's 404 JSON), not Starlette's 307
    # to the same path on the request's Host header: an empty answer to an API client, and a
    # redirect to whatever host a request (or a proxy passing its Host) names.
    app.router.redirect_slashes = False
    app.state.gateway = gw
    return app


class _App(Starlette):
    """The routes above, with ``POST /v1/chat/completions`` (and without ``/v1``) answered
    ahead of Starlette's middleware and router, which it does not need: the chat endpoint
    ends every error in OpenAI's format itself (Starlette's would be plain text) and its path
    is matched exactly. Every other request, the same path with another method or under a
    ``root_path`` included, goes through Starlette as before."""

    chat: Callable[[Scope, Receive, Send], Awaitable[None]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if (scope["type"] == "http" and scope["path"] in _CHAT_PATHS and scope["method"] == "POST"
                and not scope.get("root_path")):
            await self.chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
