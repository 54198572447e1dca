"""``OpenAIProvider``: one OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama...).

One pooled HTTP client per instance (created on first use, for the running event loop: aiohttp
driven directly under asyncio by default, ``httpx.AsyncClient`` under trio or when asked; or an
injected ``httpx.AsyncClient``; see :mod:`squirrel_models_openai._http`). Each call makes exactly
one upstream attempt; failures are mapped to the
core's errors in :mod:`squirrel_models_openai._errors`. Streams ask for the final usage chunk;
when a server sends none, the plugin counts the tokens and says so (``usage.source``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import sniffio
from squirrel_models.errors import (
    ConfigError,
    ContentFiltered,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ProviderConnectionError,
)
from squirrel_models.providers import ModelOverride, ProviderSpec
from squirrel_models.proxies import verify_context
from squirrel_models.ratelimit import UpstreamLimits
from squirrel_models.responses import new_chunk, new_provider_response
from squirrel_models.secrets import Secret
from squirrel_models.toolcalls import tool_call_deltas, tool_calls
from squirrel_models.types import (
    AIRequest,
    Choice,
    ModelCard,
    ProviderResponse,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from squirrel_models.upstream import (
    MAPPING,
    Boundary,
    choice_list,
    content_text,
    fast_dumps,
    json_body,
    parse_rate_limits,
    request_fields,
    string_or_none,
)

from ._answer import plain_answer
from ._cards import build_cards, parse_models_list
from ._catalogue import Endpoint, hosted_provider, resolve
from ._errors import UpstreamError, boundary, log, to_model_error
from ._http import Engine, HttpxEngine, make_engine, uses_aiohttp
from ._proxy import check_ca_environment, environment_proxy, proxy_endpoint
from ._sse import EventStream
from ._tokens import encoding_for, message_dict, tool_calls_text, usage_for
from .options import OpenAIOptions

__all__ = ["OpenAIProvider", "parse_tool_call_deltas", "parse_tool_calls", "parse_usage"]

#: The core's readers (:mod:`squirrel_models.toolcalls`), under the names this module gave them.
parse_tool_calls = tool_calls
parse_tool_call_deltas = tool_call_deltas

#: After ``[DONE]``, how long to read on so the connection goes back to the pool.
DRAIN_S = 0.25
_VERSION = "0.1.0"


def _tokens(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedResponse(f"usage.{what} is not a token count")
    return value


def parse_usage(u: Any) -> Usage | None:
    """The :class:`Usage` of an OpenAI ``usage`` object; None if there is none.

    OpenAI counts cached prompt tokens inside ``prompt_tokens`` and reasoning tokens inside
    ``completion_tokens``, and so does :class:`Usage`; a server that counts them apart, or
    whose ``total_tokens`` holds tokens the parts leave out, is read as
    :meth:`Usage.from_report` says, so nothing billed is missed or charged twice.
    """
    if not isinstance(u, MAPPING):
        if u is None:
            return None
        raise MalformedResponse("usage is not an object")
    prompt = _tokens(u.get("prompt_tokens", u.get("input_tokens")), "prompt_tokens")
    completion = _tokens(u.get("completion_tokens", u.get("output_tokens")), "completion_tokens")
    pd = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
    cd = u.get("completion_tokens_details") or u.get("output_tokens_details") or {}
    cached = _tokens(pd.get("cached_tokens") if isinstance(pd, MAPPING) else None, "cached_tokens")
    reasoning = _tokens(cd.get("reasoning_tokens") if isinstance(cd, MAPPING) else None, "reasoning_tokens")
    return Usage.from_report(prompt, completion, cached, reasoning,
                             _tokens(u.get("total_tokens"), "total_tokens"))


def _status_of(error_payload: Mapping[str, Any]) -> int:
    err = error_payload.get("error")
    for key in ("status", "code"):
        v = err.get(key) if isinstance(err, MAPPING) else None
        if isinstance(v, int) and not isinstance(v, bool) and 400 <= v < 600:
            return v
    return 500


def _loop_token(library: str) -> object:
    if library == "asyncio":
        import asyncio

        return asyncio.get_running_loop()
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    return library


class OpenAIProvider:
    """An OpenAI-compatible chat completions endpoint.

    ``models`` are the configured models (and overrides of discovered ones); ``discover``
    false skips ``GET /models``. ``client`` is an injected ``httpx.AsyncClient`` (tests: one
    over ``httpx.MockTransport``); the provider does not close an injected client.
    ``key_field`` names the configuration field in a missing-key error.
    """

    def __init__(self, name: str, options: OpenAIOptions | None = None, *,
                 models: Sequence[ModelOverride] = (), discover: bool = True,
                 client: httpx.AsyncClient | None = None, key_field: str = "api_key_env") -> None:
        self.name = name
        self.options = opts = options if options is not None else OpenAIOptions()
        self._key = Secret.from_env(opts.api_key_env, field=key_field) if opts.api_key_env else None
        self._key_field = key_field
        #: Dotted path of the options table, for errors that name an option.
        self._options_field = key_field.rpartition(".")[0]
        self._catalogue: Endpoint | None = None  # whose catalogue entries apply
        # Added to 401/403 errors: where the key comes from (the option, never the key).
        self._auth_hint = (
            f"check the key in the environment variable named by {key_field} ({opts.api_key_env})"
            if opts.api_key_env else
            f"no key was sent: set {key_field} to the name of the environment variable holding the key")
        # Added to a 404 that is not about a model: the server has no such path.
        v1 = "" if "/v1" in urlsplit(opts.base_url).path else (
            ", which OpenAI-compatible servers usually end in /v1")
        self._path_hint = (f"the server has no such path: check {self._options_field}.base_url "
                           f"({opts.base_url}){v1}")
        self._overrides = tuple(models)
        self._discover = discover and opts.discover is not False
        base = opts.base_url.rstrip("/")
        self._chat_url = base + "/chat/completions"
        #: The proxy the environment names (read once, at start-up: see ``_proxy``).
        self._proxy = environment_proxy(base)
        check_ca_environment()  # the TLS context is built later, off the event loop
        # host:port (and the proxy's), named in connection errors
        self._endpoint = proxy_endpoint(base, self._proxy)
        self._models_url = base + "/models"
        headers = {"Accept": "application/json", "Content-Type": "application/json",
                   "User-Agent": f"squirrel-models-openai/{_VERSION}", **opts.headers}
        if opts.organization:
            headers["OpenAI-Organization"] = opts.organization
        if opts.project:
            headers["OpenAI-Project"] = opts.project
        if self._key is not None:
            name = opts.api_key_header
            headers[name] = ("Bearer " if name.lower() == "authorization" else "") + self._key.reveal()
        self._base_headers = headers
        # An injected client has its own headers and timeouts: send ours with each request.
        self._injected: Engine | None = None if client is None else HttpxEngine(
            client, headers, httpx.Timeout(opts.timeout, connect=opts.connect_timeout), owned=False,
            max_connections=opts.max_connections)
        self._client: Engine | None = None
        self._client_loop: object = None
        self._asyncio: Any = None
        self._tls: ssl.SSLContext | None = None  # made at start-up, off the event loop
        self._encoding = opts.encoding
        self._encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        self._dumps = fast_dumps()  # msgspec when installed (the core's ``fast`` extra)
        self._cards: list[ModelCard] = []
        self._guards: dict[str | None, Boundary] = {}

    @classmethod
    def from_spec(cls, spec: ProviderSpec) -> OpenAIProvider:
        """The factory the core calls for each ``[[providers]]`` entry of type ``openai``."""
        options = spec.options if isinstance(spec.options, OpenAIOptions) else OpenAIOptions(**(spec.options or {}))
        if options.discover is True and not spec.discover:
            # the entry's false decides: the option's true was ignored without a word
            raise ConfigError("true disagrees with discover = false of its [[providers]] entry, which "
                              "decides: remove options.discover (deprecated)",
                              field=f"{spec.path or 'providers.' + spec.name}.options.discover")
        if options.discover is not None:
            log.warning("provider %r: options.discover is deprecated: discovery is switched in "
                        "one place, the [[providers]] entry's own discover = %s",
                        spec.name, str(options.discover).lower())
        return cls(spec.name, options, models=spec.models, discover=spec.discover,
                   key_field=f"{spec.path or 'providers.' + spec.name}.options.api_key_env")

    def __repr__(self) -> str:
        return (f"OpenAIProvider(name={self.name!r}, base_url={self.options.base_url!r}, "
                f"transport={self.options.transport!r}, key={'set' if self._key else 'none'})")

    # --- the HTTP client -------------------------------------------------------------------

    def _http(self) -> Engine:
        if self._injected is not None:
            return self._injected
        client, aio = self._client, self._asyncio
        if client is not None and aio is not None:
            # The usual case, without sniffio's lookups: asyncio, in the loop of the client.
            try:
                loop = aio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and loop is self._client_loop and aio.current_task(loop) is not None:
                return client
        library = sniffio.current_async_library()
        token = _loop_token(library)
        if self._client is None or self._client_loop is not token:
            # A client belongs to one event loop; a provider reused on another gets a new one.
            self._client = make_engine(self.options, self._base_headers, library, self._tls, self._proxy)
            self._client_loop = token
            # asyncio, imported only once a client runs under it (not at import: 3 MB)
            self._asyncio = sys.modules["asyncio"] if library == "asyncio" else None
        return self._client

    @property
    def cancel_safe(self) -> bool:
        """The aiohttp engine holds no cancel shield (httpx's pool shields its cleanup): the
        core may cut a request at its deadline with a plain asyncio timer."""
        return self._injected is None and self.options.transport != "httpx"

    @property
    def transport_name(self) -> str:
        """``aiohttp`` or ``httpx``: the engine this provider uses in the running event loop
        (the one its client was made with, or, before the first call, the one ``transport``
        selects there); outside any event loop, the one it would use under asyncio."""
        if self._injected is not None:
            return self._injected.name
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = "asyncio"
        else:
            if self._client is not None and self._client_loop is _loop_token(library):
                return self._client.name
        try:
            return "aiohttp" if uses_aiohttp(self.options.transport, library) else "httpx"
        except ConfigError:  # transport = "aiohttp" under trio: the first call refuses it
            return "aiohttp"

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- models ----------------------------------------------------------------------------

    def _option(self, name: str) -> str:
        return f"{self._options_field}.{name}" if self._options_field else name

    def _resolve_catalogue(self) -> Endpoint | None:
        """Whose catalogue entries apply (see :func:`._catalogue.resolve`); refuses a hosted
        API without a key here, at start-up, rather than with a 401 at the first request."""
        endpoint = resolve(self.options.prices_from, self.options.base_url, field=self._option("prices_from"))
        if self._key is None and (hosted := hosted_provider(self.options.base_url)) is not None:
            raise ConfigError(f"base_url {self.options.base_url} is {hosted}'s API, which needs an API key: "
                              "set api_key_env to the name of the environment variable that holds it",
                              field=self._key_field)
        return endpoint

    async def list_models(self) -> Sequence[ModelCard]:
        import anyio

        self._catalogue = await anyio.to_thread.run_sync(self._resolve_catalogue)
        discovered: list[tuple[str, int | None]] = []
        if self._discover:
            try:
                discovered = await self._get_models()
            except ModelError as exc:
                # A wrong key or URL is a configuration error: fail at start-up. A server that
                # is down for now should not stop the configured models from being listed.
                if not self._overrides or not exc.retryable:
                    raise
                log.warning("%s: GET /models failed (%s: %s); listing the configured models only",
                            self.name, type(exc).__name__, exc)
        cards = await anyio.to_thread.run_sync(
            build_cards, self.name, self._overrides, discovered, self._catalogue)
        await anyio.to_thread.run_sync(self._warm_tokenizers, cards)
        await anyio.to_thread.run_sync(self._warm_client, sniffio.current_async_library())
        self._cards = cards
        return list(cards)

    def _warm_client(self, library: str) -> None:
        """What the first request would otherwise do on the event loop, stalling every task
        there: take the TLS context (the CA bundle's load, 50-70 ms here, once per process
        and CA file: one context serves every engine of every provider) and import aiohttp
        when its engine will be used."""
        if self._injected is not None:
            return
        if self._tls is None:
            self._tls = verify_context()
        with contextlib.suppress(ConfigError):  # aiohttp under trio: the first call refuses it
            uses_aiohttp(self.options.transport, library)  # imports aiohttp when it is to be used

    def _warm_tokenizers(self, cards: Sequence[ModelCard]) -> None:
        for c in cards:  # loads tiktoken's files now rather than on the event loop later
            encoding_for(c.model, self._encoding)

    def _guard(self, model_id: str | None) -> Boundary:
        """The error boundary of calls to ``model_id`` (one per model: it holds no state of a
        call)."""
        guard = self._guards.get(model_id)
        if guard is None:
            guard = self._guards[model_id] = boundary(
                provider=self.name, model_id=model_id, endpoint=self._endpoint,
                auth_hint=self._auth_hint, path_hint=self._path_hint)
        return guard

    async def _get_models(self) -> list[tuple[str, int | None]]:
        with self._guard(None):
            resp = await self._http().get(self._models_url)
            if resp.status_code >= 300:
                raise UpstreamError(resp.status_code, resp.headers, resp.content)
            return parse_models_list(json_body(resp.content))

    # --- requests --------------------------------------------------------------------------

    def _body(self, model: ModelCard, request: AIRequest, stream: bool) -> bytes:
        # Passed-through fields (AIRequest.extra) as they are; what is set below wins.
        body: dict[str, Any] = {**self.options.extra_body, **request.extra, "model": model.model,
                                "messages": [message_dict(m) for m in request.messages]}
        if request.max_tokens is not None:
            body[self.options.max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [dict(t) for t in request.tools]
        if request.tool_choice is not None:
            tc = request.tool_choice
            body["tool_choice"] = tc if isinstance(tc, str) else dict(tc)
        if (request.top_p is not None or request.seed is not None or request.n != 1
                or request.user is not None or request.response_format is not None):
            body.update(request_fields(request))
        if stream:
            body["stream"] = True
            if self.options.stream_usage:
                body["stream_options"] = {"include_usage": True}
        if self._dumps is not None and not (request.extra or self.options.extra_body
                                            or request.tools or request.tool_choice is not None
                                            or request.response_format is not None):
            # Only values the request validated (no free-form JSON of the caller's, where
            # msgspec would write NaN as null): json's values, in a tenth of the time.
            try:
                return self._dumps(body)
            except (TypeError, ValueError):  # a lone surrogate: json decides, as without it
                pass
        return self._encode(body).encode()

    def _counted(self, model: ModelCard, request: AIRequest, text: str, tool_text: str = "") -> Usage:
        return usage_for(model.model, request, text, self._encoding, model.context_window, tool_text)

    def _response(self, model: ModelCard, request: AIRequest, data: Any,
                  limits: UpstreamLimits | None = None) -> ProviderResponse:
        """A non-streamed body as a :class:`ProviderResponse` (raises for error bodies), with
        the answer's rate-limit headers (``limits``)."""
        if not isinstance(data, MAPPING):
            raise MalformedResponse("body is not a JSON object")
        if data.get("error"):
            raise UpstreamError(_status_of(data), None, data)
        choices = choice_list(data.get("choices"))
        if not choices:
            raise MalformedResponse("body has no choices")
        raw_model = data.get("model")
        raw = raw_model if isinstance(raw_model, str) else None
        if request.n != 1:
            return self._choices(model, request, data, choices, raw, limits)
        text, calls, finish, refused, thought = _choice(choices[0])
        return self._one(model, request, text, calls, finish, refused, parse_usage(data.get("usage")),
                         raw, limits, thought)

    def _answer(self, model: ModelCard, request: AIRequest, body: bytes,
                limits: UpstreamLimits | None) -> ProviderResponse:
        """A non-streamed answer's body as a :class:`ProviderResponse`: decoded once into its
        parts when it has the usual shape (:func:`._answer.plain_answer`), else read by
        :meth:`_response`, whose checks decide."""
        plain = plain_answer(body) if request.n == 1 else None
        if plain is None:
            return self._response(model, request, json_body(body), limits)
        text, raw_calls, finish, raw_model, refusal, counts = plain
        return self._one(model, request, text, tool_calls(raw_calls) if raw_calls else (),
                         finish, bool(refusal), Usage.from_report(*counts) if counts is not None else None,
                         raw_model if isinstance(raw_model, str) else None, limits)

    def _one(self, model: ModelCard, request: AIRequest, text: str, calls: tuple[ToolCall, ...],
             finish: str | None, refused: bool, usage: Usage | None, raw: str | None,
             limits: UpstreamLimits | None, thought: str = "") -> ProviderResponse:
        """The response of one choice; its usage counted when the server reported none (its
        text, its tool calls and the reasoning it sent apart, ``thought``)."""
        if usage is None:
            usage = self._counted(model, request, thought + text,
                                  tool_calls_text(calls) if calls else "")
        if not text and not calls and (finish == "content_filter" or refused):
            raise _filtered(usage)
        return new_provider_response(text, usage, finish, raw, calls, (), limits)

    def _choices(self, model: ModelCard, request: AIRequest, data: Mapping[str, Any],
                 choices: list[Mapping[str, Any]], raw: str | None,
                 limits: UpstreamLimits | None = None) -> ProviderResponse:
        """An answer to a request for ``n`` > 1: every choice, ordered by its ``index``; the
        usage covers them all (counted over all their text when the server reports none)."""
        parsed = []
        for pos, choice in enumerate(choices):
            index = choice.get("index", pos)
            if isinstance(index, bool) or not isinstance(index, int):
                raise MalformedResponse("a choice's index is not an int")
            parsed.append((index, *_choice(choice)))
        parsed.sort(key=lambda c: c[0])
        if [c[0] for c in parsed] != list(range(len(parsed))):
            raise MalformedResponse("the choices' indexes are not 0..n-1")
        usage = parse_usage(data.get("usage")) or self._counted(
            model, request, "".join(c[5] + c[1] for c in parsed),
            "".join(tool_calls_text(c[2]) for c in parsed))
        if len(parsed) != request.n:
            # A server that does not take n (llama.cpp, Ollama) answers once: this model cannot
            # honour the request; another may. What it used is charged.
            raise InvalidRequestError(
                f"asked for n={request.n} answers, the server gave {len(parsed)}: it does not take n",
                model_specific=True, usage=usage)
        if all(not text and not calls and (finish == "content_filter" or refused)
               for _, text, calls, finish, refused, _ in parsed):
            raise _filtered(usage)
        out = tuple(Choice(i, text, finish, calls) for i, text, calls, finish, _, _ in parsed)
        first = out[0]
        return ProviderResponse(first.text, usage, first.finish_reason, raw, first.tool_calls, out,
                                limits)

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        body = self._body(model, request, stream=False)
        with self._guard(model.id):
            t0 = time.perf_counter()
            resp = await self._http().post(self._chat_url, body)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s POST /chat/completions %s -> %d in %.1f ms", self.name, model.model,
                          resp.status_code, (time.perf_counter() - t0) * 1000)
            if resp.status_code >= 300:
                raise UpstreamError(resp.status_code, resp.headers, resp.content)
            # The answer's rate-limit headers, for the core to respect (errors carry theirs).
            return self._answer(model, request, resp.content, parse_rate_limits(resp.headers))

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        """Stream one answer. Text chunks as they come; the last chunk carries the usage
        (reported, or counted when the server sends none) and the finish reason."""
        body = self._body(model, request, stream=True)
        st = _StreamState()
        limits = None
        try:
            with self._guard(model.id):
                async with self._http().stream(self._chat_url, body) as resp:
                    if resp.status_code >= 300:
                        await resp.aread()
                        raise UpstreamError(resp.status_code, resp.headers, resp.content)
                    limits = parse_rate_limits(resp.headers)
                    if "json" in resp.headers.get("content-type", ""):
                        # A server that ignores "stream": one plain answer.
                        await resp.aread()
                        r = self._response(model, request, json_body(resp.content))
                        st.parts.append(r.text)
                        st.usage, st.finish, st.done = r.usage, r.finish_reason, True
                        deltas = tuple(ToolCallDelta.from_call(i, c) for i, c in enumerate(r.tool_calls))
                        st.tools.extend(deltas)
                        if r.text or deltas:
                            yield StreamChunk(r.text, tool_calls=deltas)
                    else:
                        events = EventStream()
                        async with contextlib.aclosing(resp.aiter_text()) as chunks:  # type: ignore[type-var]
                            async for text in chunks:
                                for kind, data in events.feed(text):
                                    if (piece := st.take(kind, data)) is not None:
                                        yield piece
                                    if st.done:
                                        break
                                if st.done:
                                    await _drain(chunks)
                                    break
                            else:  # the body ended: a last event may lack its blank line
                                for kind, data in events.close():
                                    if (piece := st.take(kind, data)) is not None:
                                        yield piece
                if not st.done:
                    raise ProviderConnectionError("stream ended without its [DONE] terminator")
                text = "".join(st.parts)
                usage = st.usage or self._counted(model, request, st.thought() + text, st.tool_text())
                if not text and not st.tools and st.finish == "content_filter":
                    raise _filtered(usage)
        except ModelError as exc:
            if (st.parts or st.tools) and not isinstance(exc, MidStreamError):
                text = "".join(st.parts)
                received = st.usage or self._counted(model, request, st.thought() + text,
                                                     st.tool_text())
                raise MidStreamError(f"stream broke after its first chunk: {exc}", partial_text=text,
                                     usage=received, model_id=model.id, provider=self.name,
                                     status_code=exc.status_code) from exc
            raise
        yield StreamChunk("", usage, st.finish, rate_limits=limits)


def _choice(choice: Mapping[str, Any]) -> tuple[str, tuple[ToolCall, ...], str | None, bool, str]:
    """A choice's text, tool calls, finish reason, whether the model refused, and the
    reasoning it sent apart from its text (:func:`_thought`)."""
    message = choice.get("message")
    if not isinstance(message, MAPPING):
        raise MalformedResponse("choice has no message")
    text = content_text(message.get("content"))
    calls = tool_calls(message.get("tool_calls"))
    finish = string_or_none(choice.get("finish_reason"), "finish_reason")
    return text, calls, finish, bool(message.get("refusal")), _thought(message)


def _thought(message: Mapping[str, Any]) -> str:
    """The reasoning text a message or delta carries apart from its content: ``reasoning_content``
    (DeepSeek, vLLM, the llama.cpp server), else ``reasoning`` (OpenRouter, Ollama; vLLM sends
    both, the same text). Output the model generated and the provider bills: a server that
    reports no usage has it counted with the answer, not left out. Anything but text: none."""
    thought = message.get("reasoning_content") or message.get("reasoning")
    return thought if isinstance(thought, str) else ""


class _StreamState:
    """What a stream has delivered so far, folded in one server-sent event at a time."""

    __slots__ = ("done", "finish", "named", "parts", "thoughts", "tools", "usage")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.thoughts: list[str] = []
        self.tools: list[ToolCallDelta] = []
        self.named: set[int] = set()
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.done = False

    def tool_text(self) -> str:
        """The tool calls' names and argument fragments so far, for counting."""
        return "".join((d.name or "") + d.arguments_fragment for d in self.tools)

    def thought(self) -> str:
        """The reasoning received so far apart from the text (:func:`_thought`), for counting."""
        return "".join(self.thoughts)

    def take(self, kind: str, data: str) -> StreamChunk | None:
        """Fold in one event (its type and data); returns the chunk it carries (None for
        none)."""
        if data == "[DONE]":
            self.done = True
            return None
        if not data or self.done:
            return None
        obj = json_body(data, "stream event")
        if not isinstance(obj, MAPPING):
            raise MalformedResponse("stream event is not a JSON object")
        if obj.get("error") or kind == "error":
            raise UpstreamError(_status_of(obj), None, obj)
        if obj.get("usage") is not None:
            self.usage = parse_usage(obj["usage"])
        choices = choice_list(obj.get("choices"), "stream choices")
        if not choices:
            return None
        choice = choices[0]
        finish = string_or_none(choice.get("finish_reason"), "finish_reason")
        if finish:
            self.finish = finish
        delta = choice.get("delta")
        if delta is None:
            return None
        if not isinstance(delta, MAPPING):
            raise MalformedResponse("stream delta is not an object")
        if (thought := _thought(delta)):
            self.thoughts.append(thought)
        piece = content_text(delta.get("content"), "delta content")
        calls = delta.get("tool_calls")
        if calls:
            deltas = tool_call_deltas(calls, self.named)
            self.tools.extend(deltas)
            if piece:
                self.parts.append(piece)
            return new_chunk(piece, tool_calls=deltas) if piece or deltas else None
        if piece:
            self.parts.append(piece)
            return new_chunk(piece)
        return None


def _filtered(usage: Usage) -> ContentFiltered:
    err = ContentFiltered("the upstream's content filter stopped the answer")
    err.usage = usage  # the core charges what was used
    return err


async def _drain(chunks: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]`` (normally just the end of the body), briefly, so the
    connection is reused; a server that lingers only loses its connection."""
    import anyio

    with anyio.move_on_after(DRAIN_S):
        try:
            async for _ in chunks:
                pass
        except Exception as exc:  # whatever the engine: an upstream failure only loses the connection
            if to_model_error(exc) is None:
                raise


def factory(spec: ProviderSpec) -> OpenAIProvider:
    return OpenAIProvider.from_spec(spec)
