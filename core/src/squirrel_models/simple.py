"""A base class for the common provider: an HTTP or in-process model that yields text.

The author writes the call and the decoding of its answer, as one async generator; the core
supplies the rest of the :class:`~squirrel_models.providers.Provider` contract::

    class EchoProvider(SimpleProvider):
        supports = frozenset({"max_tokens", "stop"})    # request fields passed upstream

        async def generate(self, model, request):
            async with self.client.stream("POST", "/chat", json=...) as response:
                await raise_for_status(response)
                async for line in response.aiter_lines():
                    yield decode(line)                  # text; a Usage when the upstream says

What :class:`SimpleProvider` does with it:

- ``complete`` and ``stream`` both come from ``generate``: ``complete`` joins the pieces,
  ``stream`` forwards them; a failure after the first piece of a stream is a
  :class:`~squirrel_models.errors.MidStreamError` carrying the partial text and its usage.
- Errors are mapped at one boundary (:func:`squirrel_models.upstream.boundary` with
  :meth:`SimpleProvider.translate`, by default :func:`translate_error`): httpx's errors, an
  error status (``response.raise_for_status()``), an answer that cannot be decoded (a
  ``KeyError``, ``ValueError``, ``TypeError``... raised while reading it) all become the core's
  :class:`~squirrel_models.errors.ModelError` types, raised ``from`` the original, secrets
  redacted.
- Usage: what ``generate`` yields as a :class:`~squirrel_models.types.Usage` is reported usage;
  without it the core counts with :meth:`SimpleProvider.count_tokens` (the model's tokenizer:
  ``counted``), else with an exact count from the ``count_tokens`` hook (``counted``), or else
  the UTF-8 byte upper bound (``estimated``).
- Request fields: a field the provider does not list in :attr:`SimpleProvider.supports` is
  refused with :class:`~squirrel_models.errors.InvalidRequestError` (``model_specific``: the
  fallback chain tries another model), generically over every field of
  :class:`~squirrel_models.types.AIRequest`, so a field added to the request later is refused
  until a provider says it passes it on. Two are honoured by the core instead: ``max_tokens``
  (the output is cut at that many tokens, counted as above, ``finish_reason = "length"``) and
  ``stop`` (the output ends before the first stop sequence). Fields the core keeps to itself
  (:data:`CORE_FIELDS`) never reach a provider's concern.
- Cancellation: whatever ends the attempt early (the caller cancelling, a stream closed early,
  a stop sequence, the output cap), ``generate`` is closed at once (``aclose``), so the ``async
  with`` blocks in it end the upstream call.

The full :class:`~squirrel_models.providers.Provider` protocol stays for everything else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import attrs

from . import upstream
from .answersize import read_bounded
from .errors import (
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
)
from .eventlines import EventLines
from .providers import ProviderSpec
from .secrets import Secret
from .tokens import upper_bound
from .types import (
    AIRequest,
    Message,
    ModelCard,
    ProviderResponse,
    StreamChunk,
    TokenCount,
    ToolCallDelta,
    Usage,
    assemble_tool_calls,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["CORE_FIELDS", "HONOURED_BY_CORE", "SimpleProvider", "json_lines", "raise_for_status", "refuse_unsupported",
           "sse_json", "translate_error"]

#: Request fields the core keeps to itself (routing, budgets, metadata): never refused.
CORE_FIELDS = frozenset({"messages", "budget_key", "metadata"})
#: Request fields the core honours itself when a provider does not pass them upstream.
HONOURED_BY_CORE = frozenset({"max_tokens", "stop"})
#: What some fields need a provider to support (any other field needs its own name).
_REQUEST_FIELD_NEEDS = {"tool_choice": "tools"}
_MESSAGE_FIELD_NEEDS = {"tool_calls": "tools", "tool_call_id": "tools"}
_PLAIN_MESSAGE_FIELDS = frozenset({"role", "content", "name"})
#: How long closing ``generate`` may take once the attempt is over (its ``finally`` blocks).
CLOSE_TIMEOUT = 5.0

Item = str | Usage | StreamChunk


# --- errors at the boundary ------------------------------------------------------------------


async def raise_for_status(response: httpx.Response) -> None:
    """Raise ``httpx.HTTPStatusError`` for an error answer, with its body read first (a streamed
    response's body is read only when asked), so the boundary maps it with the upstream's own
    error type and message (a context overflow, a content filter, a quota...). The body is
    read within the core's bound (:mod:`squirrel_models.answersize`): an error body without
    end is a :class:`MalformedResponse`, not read into memory until the deadline."""
    if response.is_error:
        import httpx

        body = await read_bounded(response.aiter_bytes(), "the error answer")
        # The error's response holds the body read (decoded: no Content-Encoding left).
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        httpx.Response(response.status_code, headers=headers, content=body,
                       request=response.request).raise_for_status()


class _LineReader:
    """What :class:`sse_json` and :class:`json_lines` share: the response's lines, then None."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = _Lines(response)
        self._ended = False

    def __aiter__(self) -> Self:
        return self

    async def _line(self) -> str | None:
        """The next line, or None once the stream has ended (and at every call after)."""
        if not self._ended:
            try:
                return await self._lines.__anext__()
            except StopAsyncIteration:
                self._ended = True
        return None


class sse_json(_LineReader):
    """The JSON data of each server-sent event of a streamed ``response``, up to the ``done``
    marker (OpenAI's ``[DONE]``; None for a stream that just ends), or with ``end_event`` up
    to the event of that type (Anthropic's ``event: message_stop``, whose data is not
    returned).

    An answer that is not an event stream, or an event that is not JSON, is a
    :class:`MalformedResponse`; a stream that ends before ``done`` (or ``end_event``) was cut
    short: a :class:`ProviderConnectionError`; an event holding an ``error`` object is raised
    as the error it describes (:func:`upstream.error_from_status`). A class, not an async
    generator, so abandoning it early leaves nothing for the garbage collector to warn about."""

    def __init__(self, response: httpx.Response, *, done: str | None = "[DONE]",
                 end_event: str | None = None) -> None:
        super().__init__(response)
        self.done, self.end_event = done, end_event
        self._event = ""  # the type of the event being read (its "event:" line)
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            raise MalformedResponse(f"expected an event stream, got {kind.split(';')[0][:60] or 'no content type'}")

    async def __anext__(self) -> Any:
        while not self._ended:
            line = await self._line()
            if line is None:
                end = self.end_event or self.done
                if end is not None:
                    raise ProviderConnectionError(f"the event stream ended before {end}: cut short")
                break
            field, _, value = line.partition(":")
            if field != "data":
                if not line:
                    self._event = ""  # an event ends at a blank line
                elif field == "event":
                    self._event = value.strip()
                elif not line.startswith(":") and field not in ("id", "retry"):
                    raise MalformedResponse("not a server-sent event stream")
                continue
            value = value.removeprefix(" ")
            if (self._event == self.end_event) if self.end_event is not None else value == self.done:
                self._ended = True
                break
            event = upstream.json_body(value, "event")
            if isinstance(event, dict) and event.get("error") is not None:
                raise upstream.error_from_status(500, self.response.headers, event)
            return event
        raise StopAsyncIteration


class json_lines(_LineReader):
    """The JSON object of each line of a streamed ``response`` in newline-delimited JSON (an
    Ollama-style ``application/x-ndjson`` answer), up to and including the first for which
    ``end(obj)`` is true (``lambda e: e.get("done")``); ``end=None`` for a stream that just ends.

    As :class:`sse_json`: a line that is not JSON is a :class:`MalformedResponse`, a stream that
    ends before its ``end`` line was cut short (a :class:`ProviderConnectionError`, which the core
    never takes for a whole answer), a line holding an ``error`` object is raised as the error it
    describes. Blank lines are skipped. Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only, within the
    core's bound on an answer: httpx's ``aiter_lines`` also ends them at a raw U+2028 inside JSON
    text and keeps a line without end whole in memory."""

    def __init__(self, response: httpx.Response, *, end: Callable[[Any], Any] | None) -> None:
        super().__init__(response)
        self.end = end

    async def __anext__(self) -> Any:
        while not self._ended:
            line = await self._line()
            if line is None:
                if self.end is not None:
                    raise ProviderConnectionError("the JSON lines ended before the last one: cut short")
                break
            if not line.strip():
                continue
            obj = upstream.json_body(line, "line")
            if isinstance(obj, dict) and obj.get("error") is not None:
                raise upstream.error_from_status(500, self.response.headers, obj)
            if self.end is not None and self.end(obj):
                self._ended = True
            return obj
        raise StopAsyncIteration


class _Lines:
    """The lines of ``response``'s text, as the event-stream format ends them and within the
    core's bound (:class:`~squirrel_models.eventlines.EventLines`): httpx's ``aiter_lines``
    kept a line without end whole in memory and ended lines at a raw U+2028 inside JSON text.
    A class, as :class:`sse_json`."""

    def __init__(self, response: httpx.Response) -> None:
        self._text = response.aiter_text()
        self._split = EventLines()
        self._ready: list[str] = []  # lines ended, in reverse order
        self._ended = False

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            try:
                text = await self._text.__anext__()
            except StopAsyncIteration:
                self._ended = True
                if rest := self._split.close():
                    self._ready.append(rest)
                continue
            self._ready = self._split.feed(text)
            self._ready.reverse()
        return self._ready.pop()


def translate_error(exc: BaseException) -> ModelError | None:
    """The default mapping at a :class:`SimpleProvider`'s boundary:

    ====================================================  ======================================
    raised in ``generate``                                becomes
    ====================================================  ======================================
    a :class:`ModelError`                                 itself
    ``httpx.HTTPStatusError`` (``raise_for_status``)      :func:`upstream.error_from_status`
                                                          (5xx, 429 with ``retry_after``, 401...)
    ``httpx.TimeoutException``, ``TimeoutError``          :class:`ProviderTimeout`
    ``httpx.InvalidURL``, ``httpx.UnsupportedProtocol``   :class:`InvalidRequestError`
    other httpx transport errors, ``OSError``             :class:`ProviderConnectionError`
    (a refused, reset or unresolvable connection)
    ``httpx.DecodingError``; ``ValueError``,              :class:`MalformedResponse` (the answer
    ``LookupError``, ``TypeError``, ``AttributeError``,   could not be read: a missing key, JSON
    ``RecursionError`` (``json`` errors, ``KeyError``...)  that does not parse, a wrong type)
    anything else (cancellation, ``GeneratorExit``)       passes through untouched
    ====================================================  ======================================
    """
    if isinstance(exc, ModelError):
        return exc
    import httpx  # here, not at import: local providers use this module and never load httpx

    name = type(exc).__name__
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        try:
            body: bytes = response.content
        except httpx.ResponseNotRead:  # raise_for_status() on a stream: the status says enough
            body = b""
        return upstream.error_from_status(response.status_code, response.headers, body)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ProviderTimeout(f"no answer in time ({name})")
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return InvalidRequestError(f"bad request URL ({name})")
    if isinstance(exc, httpx.TransportError | httpx.StreamError | OSError):
        return ProviderConnectionError(f"connection failed ({name})")
    if isinstance(exc, httpx.DecodingError | ValueError | LookupError | TypeError | AttributeError
                  | RecursionError):
        return MalformedResponse(f"the answer could not be read ({name})")
    return None


# --- what the core honours itself -------------------------------------------------------------


class _Output:
    """The output released so far: ends it before a stop sequence (holding back text that may
    be the start of one) and cuts it at ``cap`` tokens as ``count`` counts them."""

    def __init__(self, count: Callable[[str], TokenCount], cap: int | None, stops: Iterable[str]) -> None:
        self.count, self.cap = count, cap
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.parts: list[str] = []
        self.pending = ""
        self.counted = 0  # sum of the pieces' counts: for bytes, the total; else an estimate
        self.cut: str | None = None  # "stop" or "length" once the core ended the output

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, piece: str) -> str:
        if self.cut is not None or not piece:
            return ""
        buf = self.pending + piece
        if not self.stops:
            return self._release(buf)
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.pending = ""
            out = self._release(buf[:min(found)])
            self.cut = self.cut or "stop"
            return out
        keep = min(self.hold, len(buf))
        self.pending = buf[len(buf) - keep:] if keep else ""
        return self._release(buf[:len(buf) - keep])

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.cut is not None else self._release(out)

    def _release(self, out: str) -> str:
        if not out:
            return ""
        if self.cap is not None:
            self.counted += self.count(out).tokens
            if self.counted > self.cap and self.count(self.text + out).tokens > self.cap:
                lo, hi = 0, len(out)  # the longest prefix that fits
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if self.count(self.text + out[:mid]).tokens <= self.cap:
                        lo = mid
                    else:
                        hi = mid - 1
                out, self.cut, self.pending = out[:lo], "length", ""
        self.parts.append(out)
        return out


def _unset(field: attrs.Attribute[Any], value: Any) -> bool:
    """Whether a request field holds nothing to honour: its default, None or empty."""
    if value is None or (isinstance(value, tuple | list | dict | str | frozenset) and not value):
        return True
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    return default is not attrs.NOTHING and bool(value == default)


def _needs(request: AIRequest) -> Iterator[tuple[str, str]]:
    """(what a provider must support, the field that asks for it) for ``request``: every
    request field that is set, and what the messages carry beyond role, text and name
    (images need ``"images"``; tool calls and tool results need ``"tools"``)."""
    for f in attrs.fields(AIRequest):
        if f.name in CORE_FIELDS or not f.init:  # not init: what the request derives itself
            continue
        value = getattr(request, f.name)
        if _unset(f, value) or (f.name == "response_format" and getattr(value, "type", None) == "text"):
            continue  # a "text" response format asks for nothing
        yield _REQUEST_FIELD_NEEDS.get(f.name, f.name), f.name
    for i, m in enumerate(request.messages):
        if m.role == "tool":
            yield "tools", f"messages[{i}].role"
        if not isinstance(m.content, str) and any(not isinstance(getattr(p, "text", None), str)
                                                  for p in m.content):
            yield "images", f"messages[{i}].content"
        for f in attrs.fields(Message):
            if f.name not in _PLAIN_MESSAGE_FIELDS and f.init and not _unset(f, getattr(m, f.name)):
                yield _MESSAGE_FIELD_NEEDS.get(f.name, f.name), f"messages[{i}].{f.name}"


def refuse_unsupported(model: ModelCard, request: AIRequest, supports: Iterable[str], *, provider: str) -> None:
    """Refuse ``request`` with :class:`InvalidRequestError` (``model_specific``, so the
    fallback chain tries another model) when it sets a field not in ``supports``, naming the
    field. Generic over :class:`AIRequest`'s fields (and a message's): a field added to the
    request later is refused until a provider lists it. Any provider can call it, not only a
    :class:`SimpleProvider`; :data:`CORE_FIELDS` are never refused."""
    supported = frozenset(supports)
    for need, field in _needs(request):
        if need not in supported:
            raise InvalidRequestError(
                f"provider {provider!r} does not take the request field {field!r} for {model.id} "
                f"(it takes {', '.join(sorted(supported)) or 'messages only'})",
                model_specific=True, model_id=model.id, provider=provider)


# --- the base class ----------------------------------------------------------------------------


class SimpleProvider:
    """A provider whose model yields text: subclass it and write :meth:`generate`.

    Optional, in the subclass: :attr:`supports` (the request fields passed upstream),
    :attr:`default_models` or :meth:`models` (what it serves), :attr:`features` (of its cards),
    :meth:`count_tokens` (the model's tokenizer), :meth:`translate` (more error mapping) and
    :meth:`aclose` (close the client). The class itself is a provider ``factory``:
    ``ProviderType("mine", MyProvider, MyOptions)``.
    """

    #: Request fields (names of :class:`AIRequest` fields, ``"tools"`` for tool definitions,
    #: ``tool_choice``, tool calls and tool messages) this provider passes upstream. Every other field that a
    #: request sets is refused, except :data:`CORE_FIELDS` and :data:`HONOURED_BY_CORE`.
    supports: ClassVar[frozenset[str]] = frozenset()
    #: Models served when the configuration lists none (``[[providers.models]]``).
    default_models: ClassVar[tuple[str, ...]] = ()
    #: Card features (``"tools"`` is added when :attr:`supports` has it, ``"stop"`` always).
    features: ClassVar[frozenset[str]] = frozenset({"streaming", "system_prompt"})
    _simple_provider: ClassVar[bool] = True  # what the built-in count_tokens hook looks for
    #: The ``count_tokens`` hook chain, set by the manager that builds this provider: another
    #: plugin's exact count counts the usage when :meth:`count_tokens` gives none.
    _hook_count: Callable[[ModelCard, AIRequest | None, str | None], TokenCount | None] | None = None

    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.options: Any = spec.options
        #: ``host:port`` named by connection errors and timeouts (from ``options.base_url``).
        self.endpoint = upstream.endpoint(getattr(spec.options, "base_url", None))
        self.log = logging.getLogger(type(self).__module__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, type={self.spec.type!r})"

    # --- what the author writes ----------------------------------------------------------------

    def generate(self, model: ModelCard, request: AIRequest) -> AsyncIterator[Item]:
        """One upstream attempt, as an async generator: yield the answer's text as it comes
        (``str``), a :class:`Usage` if the upstream reports one, or a :class:`StreamChunk` for
        a ``finish_reason`` or tool calls. Raise what the client raises: the core maps it."""
        raise NotImplementedError(f"{type(self).__name__} must implement generate()")

    async def models(self) -> Iterable[str | ModelCard]:
        """The models served, as names (cards are made with :meth:`card`) or cards. Default:
        the configuration's ``[[providers.models]]`` names, else :attr:`default_models`."""
        return [m.name for m in self.spec.models] or list(self.default_models)

    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> int | None:
        """The model's own count of ``request``'s prompt (template included) or of ``text``;
        None (the default) when the provider has no tokenizer: the core then uses an upper
        bound and marks the usage ``estimated``. Also answers the core's ``count_tokens`` hook
        for this provider's models, so budgets reserve by it."""
        return None

    def translate(self, exc: BaseException) -> ModelError | None:
        """The :class:`ModelError` for what ``generate`` raised (:func:`translate_error`);
        None lets it through (cancellation, bugs)."""
        return translate_error(exc)

    async def aclose(self) -> None:
        """Release what the provider opened (an ``httpx.AsyncClient``, a loaded model)."""

    # --- helpers for the author -----------------------------------------------------------------

    def card(self, model: str, **fields: Any) -> ModelCard:
        """A card for ``model`` served by this provider (``fields`` set any card field). What
        :attr:`supports` lists shows on it, so selection sends such requests here: ``tools``
        (feature), ``response_format`` (features ``json_mode`` and ``json_schema``), ``images``
        (capability ``vision``); the configuration's overrides may narrow it."""
        features = set(self.features) | {"stop"}
        if "tools" in self.supports:
            features.add("tools")
        if "response_format" in self.supports:
            features |= {"json_mode", "json_schema"}
        fields.setdefault("features", frozenset(features))
        if "images" in self.supports:
            fields.setdefault("capabilities", frozenset({"chat", "vision"}))
        return ModelCard.for_provider(self.name, model, provider_type=self.spec.type, **fields)

    def secret(self, option: str = "api_key_env") -> Secret | None:
        """The secret in the environment variable that ``options.<option>`` names (None when
        the option is unset); a missing variable is a ConfigError naming the option."""
        env = getattr(self.options, option, None)
        if env is None:
            return None
        return Secret.from_env(env, field=f"{self.spec.path or 'providers.' + self.name}.options.{option}")

    # --- the Provider contract --------------------------------------------------------------

    async def list_models(self) -> list[ModelCard]:
        """:meth:`models` (skipped when the entry says ``discover = false`` and lists its
        models) as cards, each with its ``[[providers.models]]`` override applied; a model the
        configuration declares and :meth:`models` did not return is served too."""
        found: list[str | ModelCard] = []
        if self.spec.discover or not self.spec.models:
            with self._boundary(None):
                found = list(await self.models())
        cards = [m if isinstance(m, ModelCard) else self.card(m) for m in found]
        names = {c.model for c in cards}
        cards += [self.card(o.name) for o in self.spec.models if o.name not in names]
        overrides = {o.name: o for o in self.spec.models}
        return [overrides[c.model].apply(c) if c.model in overrides else c for c in cards]

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        parts: list[str] = []
        deltas: list[ToolCallDelta] = []
        usage, finish = None, None
        async with contextlib.aclosing(self._attempt(model, request)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                deltas.extend(chunk.tool_calls)
                usage = chunk.usage or usage
                finish = chunk.finish_reason or finish
        assert usage is not None  # _attempt always ends with it
        return ProviderResponse("".join(parts), usage, finish, model.model, assemble_tool_calls(deltas))

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        sent: list[str] = []
        started = False
        async with contextlib.aclosing(self._attempt(model, request)) as chunks:
            try:
                async for chunk in chunks:
                    if chunk.text or chunk.tool_calls:
                        started = True
                        sent.append(chunk.text)
                    yield chunk
            except ModelError as exc:
                if not started or isinstance(exc, MidStreamError):
                    raise  # nothing reached the caller: the core may fall back
                raise MidStreamError(str(exc), partial_text="".join(sent), usage=exc.usage,
                                     model_id=model.id, provider=self.name) from exc

    # --- the attempt -------------------------------------------------------------------------

    def _boundary(self, model: ModelCard | None) -> contextlib.AbstractContextManager[None]:
        hint = (f"check the key in the environment variable named by options.api_key_env "
                f"({self.options.api_key_env})" if getattr(self.options, "api_key_env", None) else None)
        return upstream.boundary(self.translate, provider=self.name, model_id=model.id if model else None,
                                 log=self.log, endpoint=self.endpoint, auth_hint=hint)

    def _own_count(self, model: ModelCard, request: AIRequest | None = None,
                   text: str | None = None) -> TokenCount | None:
        """:meth:`count_tokens`'s count, or None."""
        try:
            n = self.count_tokens(model, request, text)
        except Exception as exc:  # a tokenizer that fails must not fail the request: bound it
            self.log.warning("%s: count_tokens failed for %s (%s): using the upper bound",
                             self.name, model.id, type(exc).__name__)
            n = None
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            return TokenCount(n, exact=True, method="provider tokenizer")
        return None

    def _count(self, model: ModelCard, request: AIRequest | None = None, text: str | None = None) -> TokenCount:
        """The provider's own count, else an exact count from the ``count_tokens`` hook (a
        plugin that brings the tokenizer), else the upper bound."""
        own = self._own_count(model, request, text)
        if own is not None:
            return own
        if self._hook_count is not None:
            try:
                hooked = self._hook_count(model, request, text)
            except Exception as exc:  # as a failing tokenizer above: bound it
                self.log.warning("%s: the count_tokens hook failed for %s (%s): using the upper bound",
                                 self.name, model.id, type(exc).__name__)
                hooked = None
            if hooked is not None and hooked.exact:
                return hooked
        return upper_bound(request, text)

    def _usage(self, model: ModelCard, request: AIRequest, text: str) -> Usage:
        prompt, out = self._count(model, request), self._count(model, text=text)
        return Usage(prompt.tokens, out.tokens, source="counted" if prompt.exact and out.exact else "estimated")

    def refuse_unsupported(self, model: ModelCard, request: AIRequest) -> None:
        """Raise :class:`InvalidRequestError` (``model_specific``) naming the first field of
        ``request`` this provider would have to drop (see :attr:`supports`)."""
        refuse_unsupported(model, request, self.supports | HONOURED_BY_CORE, provider=self.name)

    async def _attempt(self, model: ModelCard, request: AIRequest) -> AsyncGenerator[StreamChunk, None]:
        """One attempt: refused fields first, then ``generate`` through the boundary, with the
        output the core honours itself; the last chunk carries the usage."""
        self.refuse_unsupported(model, request)
        output = _Output(lambda text: self._count(model, text=text),
                         None if "max_tokens" in self.supports else request.max_tokens,
                         () if "stop" in self.supports else request.stop)
        reported: Usage | None = None
        finish: str | None = None
        items = self.generate(model, request)
        try:
            while output.cut is None:
                with self._boundary(model):
                    try:
                        item = await items.__anext__()
                    except StopAsyncIteration:
                        break
                if isinstance(item, Usage):
                    reported = item
                    continue
                if isinstance(item, str):
                    chunk = StreamChunk(item)
                elif isinstance(item, StreamChunk) and isinstance(item.text, str):
                    chunk = item
                else:  # a bug in the plugin, not an upstream failure: not mapped
                    raise TypeError(f"generate() yielded a {type(item).__name__}: yield text (str), "
                                    "a Usage or a StreamChunk")
                reported = chunk.usage or reported
                finish = chunk.finish_reason or finish
                text = output.feed(chunk.text)
                if text or chunk.tool_calls:
                    yield StreamChunk(text, tool_calls=chunk.tool_calls)
            tail = output.flush()
            if tail:
                yield StreamChunk(tail)
        except ModelError as exc:
            if exc.usage is None and (output.text or output.pending):
                exc.usage = self._usage(model, request, output.text + output.pending)
            raise
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT), \
                    self._boundary(model), contextlib.suppress(ModelError):
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()
        if output.cut is not None:
            # The core ended the answer: what the upstream reports (if it did) was not all read.
            finish, reported = output.cut, None
        yield StreamChunk("", reported or self._usage(model, request, output.text), finish or "stop")


def count_with_provider(model: ModelCard, provider: Any, request: AIRequest | None,
                        text: str | None) -> TokenCount | None:
    """The ``count_tokens`` hook's answer for a :class:`SimpleProvider` with a tokenizer."""
    if not isinstance(provider, SimpleProvider) or type(provider).count_tokens is SimpleProvider.count_tokens:
        return None
    return provider._own_count(model, request, text)  # not _count: that asks this hook
