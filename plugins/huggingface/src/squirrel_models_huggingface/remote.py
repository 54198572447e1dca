"""Remote inference through ``huggingface_hub.AsyncInferenceClient``: Inference Providers, Inference
Endpoints, self-hosted TGI and any OpenAI-compatible server.

One client per event loop for plain calls. Each stream gets a client of its own, closed when
the stream ends: huggingface_hub keeps a streamed response open on its client until the
client closes (it is entered into the client's exit stack), so a long-lived client would hold
one connection per stream ever made. Exactly one upstream attempt per call; errors are mapped
in :mod:`._errors`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator, Mapping
from types import CodeType
from typing import TYPE_CHECKING, Any

import anyio
import sniffio
from squirrel_models.errors import (
    ContentFiltered,
    InvalidRequest,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ProviderConnectionError,
)
from squirrel_models.secrets import Secret
from squirrel_models.tokens import upper_bound
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
from squirrel_models.unanswered import mark_unsent_if_in
from squirrel_models.upstream import (
    content_text,
    endpoint,
    message_dict,
    request_fields,
    string_or_none,
)

from ._errors import boundary, log, scrub
from .options import HuggingFaceOptions

if TYPE_CHECKING:
    from huggingface_hub import AsyncInferenceClient

__all__ = ["RemoteBackend", "estimated_usage", "message_dicts", "parse_tool_call_deltas", "parse_tool_calls",
           "parse_usage"]

#: How long a failed stream may take to read its error body (for the error's details).
ERROR_BODY_S = 1.0
CLOSE_S = 2.0


def message_dicts(request: AIRequest) -> list[dict[str, Any]]:
    return [message_dict(m) for m in request.messages]


def _entries(value: Any) -> list[Any]:
    if not value:
        return []
    # Older TGI streams sent one tool call object rather than a list.
    return list(value) if isinstance(value, list | tuple) else [value]


def parse_tool_calls(value: Any) -> tuple[ToolCall, ...]:
    """A message's ``tool_calls`` (huggingface_hub output objects or mappings) as
    :class:`ToolCall` objects, read by the core (:mod:`squirrel_models.toolcalls`)."""
    return tool_calls(_entries(value))


def parse_tool_call_deltas(value: Any, named: set[int]) -> tuple[ToolCallDelta, ...]:
    """A stream delta's ``tool_calls`` as :class:`ToolCallDelta` pieces, keyed by ``index``
    (the position when absent); ``named``: the indices whose first piece came already."""
    return tool_call_deltas(_entries(value), named)


def _tool_text(calls: Any) -> str:
    """Tool calls (or their pieces) as text, so an estimated usage covers them."""
    return "".join((c.name or "") + (c.arguments if isinstance(c, ToolCall) else c.arguments_fragment)
                   for c in calls)


def _count(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedResponse(f"usage.{what} is not a token count")
    return value


def _get(obj: Any, name: str) -> Any:
    """A field of a huggingface_hub output object (its attributes keep fields that its dict
    view drops, such as ``prompt_tokens_details``) or of a plain mapping."""
    value = getattr(obj, name, None)
    if value is None and isinstance(obj, Mapping):
        value = obj.get(name)
    return value


#: What a chunk or body may be made of: huggingface_hub's output objects or plain JSON values.
_SHAPE_ERRORS = (AttributeError, IndexError, KeyError, TypeError, ValueError, RecursionError)


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Parse an upstream answer: a shape huggingface_hub's parser or ours cannot read (an
    object where a list belongs, a number where text belongs...) is a MalformedResponse,
    never a TypeError, KeyError or AttributeError."""
    try:
        yield
    except _SHAPE_ERRORS as exc:
        if isinstance(exc, ModelError | InvalidRequest):
            raise
        raise MalformedResponse(f"{what} is not what the protocol promises ({type(exc).__name__})") from exc


def _choices(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise MalformedResponse("choices is not a list")
    if any(isinstance(c, str | int | float | bool | list | tuple) or c is None for c in value):
        raise MalformedResponse("a choices entry is not an object")
    return list(value)


def parse_usage(u: Any) -> Usage | None:
    """The :class:`Usage` of an OpenAI-style usage object (cached tokens inside the prompt,
    reasoning tokens inside the completion; parts counted apart, or left out of
    ``total_tokens``, read as :meth:`Usage.from_report` says); None when there is none."""
    if u is None:
        return None
    if isinstance(u, str | int | float | bool | list | tuple):
        raise MalformedResponse("usage is not an object")
    prompt = _count(_get(u, "prompt_tokens"), "prompt_tokens")
    completion = _count(_get(u, "completion_tokens"), "completion_tokens")
    pd, cd = _get(u, "prompt_tokens_details"), _get(u, "completion_tokens_details")
    cached = _count(_get(pd, "cached_tokens") if pd is not None else None, "cached_tokens")
    reasoning = _count(_get(cd, "reasoning_tokens") if cd is not None else None, "reasoning_tokens")
    return Usage.from_report(prompt, completion, cached, reasoning,
                             _count(_get(u, "total_tokens"), "total_tokens"))


def estimated_usage(request: AIRequest, text: str, context_window: int | None, tool_text: str = "") -> Usage:
    """Usage for a server that reported none: the core's byte-level upper bound, tightened by
    what the server enforced (no more output than ``max_tokens``, no more prompt than the
    context window it accepted). Marked ``estimated``."""
    prompt = upper_bound(request).tokens
    if context_window:
        prompt = min(prompt, context_window)
    output = upper_bound(text=text + tool_text).tokens
    if request.max_tokens:
        output = min(output, request.max_tokens * request.n)  # n answers, each up to max_tokens
    return Usage(prompt, output, source="estimated")


def _loop_token() -> object:
    library = sniffio.current_async_library()
    if library == "asyncio":
        import asyncio

        return asyncio.get_running_loop()
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    return library


class _StreamState:
    __slots__ = ("finish", "named", "parts", "thoughts", "tools", "usage")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.thoughts: list[str] = []
        self.tools: list[ToolCallDelta] = []
        self.named: set[int] = set()
        self.finish: str | None = None
        self.usage: Usage | None = None

    def take(self, chunk: Any) -> StreamChunk | None:
        """Fold in one chunk; returns what it carries for the caller (None for nothing)."""
        usage = _get(chunk, "usage")
        if usage is not None:
            self.usage = parse_usage(usage)
        choices = _choices(_get(chunk, "choices"))
        if not choices:
            return None
        choice = choices[0]
        finish = string_or_none(_get(choice, "finish_reason"), "finish_reason")
        if finish:
            self.finish = finish
        delta = _get(choice, "delta")
        if delta is None:
            return None
        if (thought := _thought(delta)):
            self.thoughts.append(thought)
        piece = content_text(_get(delta, "content"), "delta content")
        deltas = parse_tool_call_deltas(_get(delta, "tool_calls"), self.named)
        if piece:
            self.parts.append(piece)
        if deltas:
            self.tools.extend(deltas)
            return StreamChunk(piece, tool_calls=deltas)
        return StreamChunk(piece) if piece else None


class RemoteBackend:
    """Chat through ``AsyncInferenceClient`` for one provider instance (``server`` or ``hub`` mode)."""

    def __init__(self, name: str, options: HuggingFaceOptions, token: Secret | None,
                 token_field: str = "token_env") -> None:
        self.name = name
        self.options = options
        self._token = token
        # Added to 401/403 errors: where the token comes from (the option, never the token).
        self._auth_hint = (
            f"check the token in the environment variable named by {token_field} ({options.token_env})"
            if options.token_env else
            f"no token was configured: set {token_field} to the name of the environment variable holding it")
        self._client: AsyncInferenceClient | None = None
        self._client_loop: object = None
        self._mapped: set[str] = set()
        # host:port of a server, named in connection errors (Inference Providers choose
        # their hosts themselves)
        self._endpoint = endpoint(options.base_url)

    def __repr__(self) -> str:
        where = self.options.base_url or f"Inference Providers ({self.options.inference_provider or 'auto'})"
        return f"RemoteBackend({where!r}, token={'set' if self._token else 'none'})"

    # --- clients -----------------------------------------------------------------------------

    def _new_client(self) -> AsyncInferenceClient:
        # Answers read within the core's bound (imported here: huggingface_hub loads slowly).
        from ._bounded import BoundedInferenceClient as AsyncInferenceClient

        o = self.options
        token = self._token.reveal() if self._token is not None else None
        headers = dict(o.headers)
        if o.mode == "server":
            # The model goes to chat_completion(model=...): the constructor refuses both.
            return AsyncInferenceClient(base_url=o.base_url, api_key=token, timeout=o.timeout,
                                        headers=headers, bill_to=o.bill_to)
        return AsyncInferenceClient(provider=o.inference_provider, token=token,  # type: ignore[arg-type]
                                    timeout=o.timeout, headers=headers, bill_to=o.bill_to)

    def _shared(self) -> AsyncInferenceClient:
        token = _loop_token()
        if self._client is None or self._client_loop is not token:
            # A client's connections belong to one event loop: a new loop gets a new client.
            self._client = self._new_client()
            self._client_loop = token
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_S):
                await client.close()  # type: ignore[no-untyped-call]

    async def _warm_mapping(self, model: str) -> None:
        """Inference Providers with a named provider look the model up on the Hub, inside
        huggingface_hub's request building, blocking and unbounded: look it up first, off the
        event loop and within the core's bound (:mod:`._hub`)."""
        provider = self.options.inference_provider
        if self.options.mode != "hub" or provider is None or provider == "auto" or model in self._mapped:
            return
        from ._hub import look_up

        await look_up(provider, model, token=self._token.reveal() if self._token is not None else None,
                      timeout=self.options.timeout)
        self._mapped.add(model)

    # --- requests ----------------------------------------------------------------------------

    def _params(self, card: ModelCard, request: AIRequest, stream: bool) -> dict[str, Any]:
        p: dict[str, Any] = {"model": card.model, "max_tokens": request.max_tokens,
                             "temperature": request.temperature, "stream": stream}
        if request.stop:
            p["stop"] = list(request.stop)
        if request.tools:
            p["tools"] = [dict(t) for t in request.tools]
        if request.tool_choice is not None:
            tc = request.tool_choice
            p["tool_choice"] = tc if isinstance(tc, str) else dict(tc)
        if stream and self.options.stream_usage:
            p["stream_options"] = {"include_usage": True}
        # huggingface_hub takes the OpenAI fields as arguments...
        fields = request_fields(request)
        user = fields.pop("user", None)
        p.update(fields)
        # ...but not user: it goes in the body as is, with the fields passed through
        extra = {**self.options.extra_body, **request.extra}
        if user is not None:
            extra["user"] = user
        if extra:
            p["extra_body"] = extra
        return p

    async def complete(self, card: ModelCard, request: AIRequest) -> ProviderResponse:
        try:
            with boundary(provider=self.name, model_id=card.id, endpoint=self._endpoint,
                          auth_hint=self._auth_hint):
                await self._warm_mapping(card.model)
                out = await self._shared().chat_completion(message_dicts(request),
                                                           **self._params(card, request, False))
                with _reading("the body"):
                    return self._response(card, request, out)
        except BaseException as exc:
            mark_unsent_if_in(exc, _connecting())
            raise

    def _response(self, card: ModelCard, request: AIRequest, out: Any) -> ProviderResponse:
        choices = _choices(_get(out, "choices"))
        if not choices:
            raise MalformedResponse("body has no choices")
        raw_model = _get(out, "model")
        raw = raw_model if isinstance(raw_model, str) else None
        if request.n != 1:
            return self._answers(card, request, out, choices, raw)
        text, calls, finish, thought = _choice(choices[0])
        usage = (parse_usage(_get(out, "usage"))
                 or estimated_usage(request, thought + text, card.context_window, _tool_text(calls)))
        if not text and not calls and finish == "content_filter":
            raise _filtered(usage)
        return ProviderResponse(text, usage, finish, raw, calls)

    def _answers(self, card: ModelCard, request: AIRequest, out: Any, choices: list[Any],
                 raw: str | None) -> ProviderResponse:
        """The answers to a request for ``n`` > 1, ordered by index; the usage covers all."""
        parsed = []
        for pos, choice in enumerate(choices):
            index = _get(choice, "index")
            index = pos if index is None else index
            if isinstance(index, bool) or not isinstance(index, int):
                raise MalformedResponse("a choice's index is not an int")
            parsed.append((index, *_choice(choice)))
        parsed.sort(key=lambda c: c[0])
        if [c[0] for c in parsed] != list(range(len(parsed))):
            raise MalformedResponse("the choices' indexes are not 0..n-1")
        usage = parse_usage(_get(out, "usage")) or estimated_usage(
            request, "".join(c[4] + c[1] for c in parsed), card.context_window,
            "".join(_tool_text(c[2]) for c in parsed))
        if len(parsed) != request.n:
            # A server that does not take n answers once: another model may. Its use is charged.
            raise InvalidRequestError(
                f"asked for n={request.n} answers, the server gave {len(parsed)}: it does not take n",
                model_specific=True, usage=usage)
        if all(not text and not calls and finish == "content_filter" for _, text, calls, finish, _ in parsed):
            raise _filtered(usage)
        answers = tuple(Choice(i, text, finish, calls) for i, text, calls, finish, _ in parsed)
        first = answers[0]
        return ProviderResponse(first.text, usage, first.finish_reason, raw, first.tool_calls, answers)

    async def stream(self, card: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        """Text chunks as they come; the last chunk carries usage (reported, or estimated when
        the server sends none) and the finish reason. A stream that ends without a finish
        reason was cut off: a connection error (after the first chunk, a MidStreamError)."""
        st = _StreamState()
        client = self._new_client()
        try:
            try:
                with boundary(provider=self.name, model_id=card.id, endpoint=self._endpoint,
                              auth_hint=self._auth_hint):
                    await self._warm_mapping(card.model)
                    try:
                        chunks = await client.chat_completion(message_dicts(request),
                                                              **self._params(card, request, True))
                    except Exception as exc:
                        await _read_error_body(exc)
                        raise
                    except BaseException as exc:
                        mark_unsent_if_in(exc, _connecting())
                        raise
                    lines = _source_lines(chunks)
                    try:
                        with _reading("a stream chunk"):
                            async with contextlib.aclosing(chunks):
                                async for chunk in chunks:
                                    piece = st.take(chunk)
                                    if piece is not None:
                                        yield piece
                    finally:
                        if lines is not None:
                            with anyio.CancelScope(shield=True):
                                await lines.aclose()
                    if st.finish is None:
                        raise ProviderConnectionError("stream ended without a finish reason (cut off)")
                    text = "".join(st.parts)
                    usage = st.usage or estimated_usage(request, "".join(st.thoughts) + text, card.context_window,
                                                        _tool_text(st.tools))
                    if not text and not st.tools and st.finish == "content_filter":
                        raise _filtered(usage)
            except ModelError as exc:
                if (st.parts or st.tools) and not isinstance(exc, MidStreamError):
                    text = "".join(st.parts)
                    received = st.usage or estimated_usage(request, "".join(st.thoughts) + text,
                                                           card.context_window, _tool_text(st.tools))
                    raise MidStreamError(f"stream broke after its first chunk: {exc}", partial_text=text,
                                         usage=received, model_id=card.id, provider=self.name,
                                         status_code=exc.status_code) from exc
                raise
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_S):
                try:
                    await client.close()  # type: ignore[no-untyped-call]
                except Exception as exc:  # closing a broken connection: nothing left to release
                    scrub(exc)
                    log.debug("%s: closing a stream's client failed: %s", self.name, type(exc).__name__)
        yield StreamChunk("", usage, st.finish)


@functools.cache
def _connecting() -> tuple[CodeType | None, ...]:
    """The code of httpcore2's ``AsyncHTTPConnection._connect`` (huggingface_hub's client:
    the TCP connect and TLS handshake of a new connection, before any byte of a request is
    written), for :func:`mark_unsent_if_in`: a call cut there never left, and costs nothing.
    Not httpcore2's public API (read in httpcore2 2.16); where a release has none, such a cut
    is charged as one that may have left."""
    try:
        import httpcore2
    except ImportError:
        return ()
    connect = getattr(getattr(httpcore2, "AsyncHTTPConnection", None), "_connect", None)
    return (getattr(connect, "__code__", None),)


def _source_lines(chunks: Any) -> Any:
    """The generator of raw lines under huggingface_hub's chunk parser. The parser stops at
    ``[DONE]`` without closing it, and closing the parser does not close it either: it is
    closed here, so it is not left for the garbage collector (trio warns)."""
    frame = getattr(chunks, "ag_frame", None)
    lines = frame.f_locals.get("lines") if frame is not None else None
    return lines if hasattr(lines, "aclose") else None


async def _read_error_body(exc: BaseException) -> None:
    """Read the body of a streamed error response, briefly, so the error mapping sees the
    upstream's error code (context overflow, quota...)."""
    response = getattr(exc, "response", None)
    if response is None or not hasattr(response, "aread"):
        return
    with anyio.move_on_after(ERROR_BODY_S), contextlib.suppress(Exception):
        await response.aread()


def _choice(choice: Any) -> tuple[str, tuple[ToolCall, ...], str | None, str]:
    """A choice's text, tool calls, finish reason and the reasoning it sent apart from its text
    (:func:`_thought`)."""
    message = _get(choice, "message")
    if message is None:
        raise MalformedResponse("choice has no message")
    text = content_text(_get(message, "content"))
    calls = parse_tool_calls(_get(message, "tool_calls"))
    return text, calls, string_or_none(_get(choice, "finish_reason"), "finish_reason"), _thought(message)


def _thought(message: Any) -> str:
    """The reasoning text a message or delta carries apart from its content (``reasoning``,
    as huggingface_hub names it, or ``reasoning_content``): output the model generated and the
    provider bills, estimated with the answer when the server reports no usage, never left
    out. Anything but text: none."""
    thought = _get(message, "reasoning_content") or _get(message, "reasoning")
    return thought if isinstance(thought, str) else ""


def _filtered(usage: Usage) -> ContentFiltered:
    err = ContentFiltered("the upstream's content filter stopped the answer")
    err.usage = usage
    return err
