"""``ScriptedProvider``: a test double. It calls no model; it plays a script.

Each call to a model takes the next step of that model's script (then repeats the last step
or, with ``default``, answers with it): :class:`Reply`, :class:`Fail`, :class:`Hang`,
:class:`StreamReply` or :class:`ToolReply`. Token counts are words plus two per message, reported as exact through
the ``count_tokens`` hook, so tests can check accounting to the token.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import attrs

from ..errors import ConfigError, MidStreamError, ModelError, ServerError
from ..hookspecs import hookimpl
from ..providers import ProviderSpec, ProviderType
from ..ratelimit import UpstreamLimits
from ..types import (
    AIRequest,
    Choice,
    ModelCard,
    ProviderResponse,
    StreamChunk,
    TokenCount,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["Fail", "Hang", "Reply", "ScriptedProvider", "StreamReply", "ToolReply", "word_count"]

TYPE_NAME = "scripted"
UNCOUNTED = "scripted-uncounted"  # the cards of ``options.tokenizer = false``


def word_count(text: str) -> int:
    return len(text.split())


#: What an image counts in a scripted model's prompt.
IMAGE_TOKENS = 85


def prompt_tokens(request: AIRequest) -> int:
    return sum(word_count(m.text) + 2 + IMAGE_TOKENS * len(m.images) for m in request.messages)


@attrs.frozen
class Reply:
    """Answer ``text`` after ``delay`` seconds; ``usage`` overrides the counted usage;
    ``rate_limits`` is what the answer's rate-limit headers would have said."""

    text: str = "scripted answer"
    delay: float = 0.0
    usage: Usage | None = None
    finish_reason: str = "stop"
    rate_limits: UpstreamLimits | None = None


@attrs.frozen
class Fail:
    """Raise ``error`` after ``delay`` seconds (before any chunk when streaming)."""

    error: ModelError
    delay: float = 0.0


@attrs.frozen
class Hang:
    """Never answer (until cancelled)."""


def _chunks(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class StreamReply:
    """Stream ``chunks``, ``delay`` seconds apart; with ``fail_after`` = n, raise ``error``
    after n chunks (a broken stream). ``usage`` False: send no usage (like some servers)."""

    chunks: tuple[str, ...] = attrs.field(converter=_chunks)
    delay: float = 0.0
    fail_after: int | None = None
    error: ModelError | None = None
    send_usage: bool = True


def _calls(value: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(value)


@attrs.frozen
class ToolReply:
    """Answer with ``calls`` (and ``text``, often empty) after ``delay`` seconds. Streamed,
    each call comes as pieces: its id and name, then its arguments in two fragments. Output
    tokens are the words of the text and of each call's name and arguments."""

    calls: tuple[ToolCall, ...] = attrs.field(converter=_calls)
    text: str = ""
    delay: float = 0.0
    usage: Usage | None = None
    finish_reason: str = "tool_calls"

    def output(self) -> str:
        return " ".join([self.text, *(f"{c.name} {c.arguments}" for c in self.calls)])


def _pieces(calls: Sequence[ToolCall]) -> list[ToolCallDelta]:
    out = []
    for i, c in enumerate(calls):
        half = len(c.arguments) // 2
        out += [ToolCallDelta(i, c.id, c.name), ToolCallDelta(i, arguments_fragment=c.arguments[:half]),
                ToolCallDelta(i, arguments_fragment=c.arguments[half:])]
    return out


Step = Reply | Fail | Hang | StreamReply | ToolReply


@attrs.define
class ScriptedProvider:
    """A provider that plays scripts. ``models`` are its cards (ids ``<name>/<model>``).

    ``calls`` counts upstream attempts per model name; ``open_streams`` the streams not yet
    closed; ``closed`` tells whether ``aclose`` ran; ``last_request`` is the request of the
    latest call.
    """

    name: str
    models: Sequence[ModelCard] = ()
    scripts: dict[str, deque[Step]] = attrs.field(factory=dict)
    default: Step = Reply()
    calls: dict[str, int] = attrs.field(factory=lambda: defaultdict(int))
    in_flight: int = 0
    max_in_flight: int = 0
    open_streams: int = 0
    closed: bool = False
    last_request: AIRequest | None = None
    #: model name -> HTTP status: every call to that model fails with a ServerError
    failing: dict[str, int] = attrs.field(factory=dict)
    #: Its calls hold no cancel shield (see :class:`squirrel_models.providers.Provider`).
    cancel_safe: ClassVar[bool] = True

    @classmethod
    def with_models(cls, name: str, *models: str | ModelCard, **card_kw: Any
                    ) -> ScriptedProvider:
        """A provider named ``name`` serving ``models`` (names or cards)."""
        cards = [m if isinstance(m, ModelCard) else
                 ModelCard.for_provider(name, m, provider_type=TYPE_NAME,
                                        features={"streaming", "system_prompt"}, **card_kw)
                 for m in models]
        return cls(name, cards)

    def script(self, model: str, *steps: Step) -> ScriptedProvider:
        """Queue ``steps`` for ``model`` (a model name or id)."""
        self.scripts.setdefault(model.split("/", 1)[-1], deque()).extend(steps)
        return self

    def _next(self, model: ModelCard) -> Step:
        q = self.scripts.get(model.model)
        if q:
            return q.popleft()
        status = self.failing.get(model.model)
        if status is not None:
            return Fail(ServerError(f"scripted failure {status}", status_code=status))
        return self.default

    async def list_models(self) -> Sequence[ModelCard]:
        return list(self.models)

    def _usage(self, request: AIRequest, text: str) -> Usage:
        return Usage(prompt_tokens(request), word_count(text), source="reported")

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        step = self._next(model)
        self.calls[model.model] += 1
        self.last_request = request
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if isinstance(step, Hang):
                await anyio.sleep_forever()
            if isinstance(step, Fail):
                await anyio.sleep(step.delay)
                raise step.error
            if isinstance(step, StreamReply):
                step = Reply("".join(step.chunks), step.delay)
            if isinstance(step, ToolReply):
                await anyio.sleep(step.delay)
                usage = step.usage or self._usage(request, step.output())
                return ProviderResponse(step.text, usage, step.finish_reason, model.model, step.calls)
            assert isinstance(step, Reply)
            await anyio.sleep(step.delay)
            if request.n > 1:  # n answers, each the reply; the usage counts them all
                choices = tuple(Choice(i, step.text, step.finish_reason) for i in range(request.n))
                usage = step.usage or Usage(prompt_tokens(request), request.n * word_count(step.text))
                return ProviderResponse(step.text, usage, step.finish_reason, model.model, (), choices)
            return ProviderResponse(step.text, step.usage or self._usage(request, step.text),
                                    step.finish_reason, model.model,
                                    rate_limits=step.rate_limits)
        finally:
            self.in_flight -= 1

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        step = self._next(model)
        self.calls[model.model] += 1
        self.last_request = request
        self.open_streams += 1
        try:
            if isinstance(step, Hang):
                await anyio.sleep_forever()
            if isinstance(step, Fail):
                await anyio.sleep(step.delay)
                raise step.error
            if isinstance(step, ToolReply):
                await anyio.sleep(step.delay)
                if step.text:
                    yield StreamChunk(step.text)
                for piece in _pieces(step.calls):
                    yield StreamChunk(tool_calls=(piece,))
                yield StreamChunk("", step.usage or self._usage(request, step.output()), step.finish_reason)
                return
            if isinstance(step, Reply):
                words = step.text.split(" ")
                step = StreamReply(tuple(w + (" " if i < len(words) - 1 else "")
                                         for i, w in enumerate(words)), step.delay)
            assert isinstance(step, StreamReply)
            sent: list[str] = []
            for i, chunk in enumerate(step.chunks):
                if step.fail_after is not None and i == step.fail_after:
                    err = step.error or ModelError("connection reset mid-stream")
                    raise MidStreamError(str(err), partial_text="".join(sent),
                                         usage=self._usage(request, "".join(sent))) from err
                await anyio.sleep(step.delay)
                sent.append(chunk)
                yield StreamChunk(chunk)
            text = "".join(sent)
            yield StreamChunk("", self._usage(request, text) if step.send_usage else None, "stop")
        finally:
            self.open_streams -= 1

    async def aclose(self) -> None:
        self.closed = True


def _factory(spec: ProviderSpec) -> ScriptedProvider:
    opts: Mapping[str, Any] = spec.options or {}
    names: Iterable[str] = opts.get("models", ["echo"])
    p = ScriptedProvider.with_models(spec.name, *names)
    if opts.get("tokenizer", True) is False:
        # options.tokenizer = false: no exact counts, like a model no tokenizer plugin knows
        p.models = [attrs.evolve(c, provider_type=UNCOUNTED) for c in p.models]
    p.models = [next((o.apply(c) for o in spec.models if o.name == c.model), c)
                for c in p.models]
    if "reply" in opts:
        p.default = Reply(str(opts["reply"]))
    # options.fail = { model = 500 }: that model always fails with that 5xx status
    fail = opts.get("fail", {})
    if not isinstance(fail, Mapping):
        raise ConfigError("a table of model = HTTP status", field=f"providers.{spec.name}.options.fail")
    for k, v in fail.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 500 <= v <= 599:
            raise ConfigError(f"must be a 5xx HTTP status, got {v!r}",
                              field=f"providers.{spec.name}.options.fail.{k}")
        p.failing[str(k)] = v
    return p


@hookimpl
def register_providers() -> list[ProviderType]:
    return [ProviderType(TYPE_NAME, _factory, None,
                         "test double: plays scripted replies and failures")]


@hookimpl
def count_tokens(model: ModelCard, request: AIRequest | None, text: str | None
                 ) -> TokenCount | None:
    if model.provider_type != TYPE_NAME:
        return None
    if request is not None:
        return TokenCount(prompt_tokens(request), exact=True, method="words")
    return TokenCount(word_count(text or ""), exact=True, method="words")


class ScriptedPlugin:
    """The plugin that registers the ``scripted`` provider type and its exact token counter.

    This module is also a plugin itself (``squirrel_models.testing.provider``), for an entry
    point in a test distribution.
    """

    register_providers = staticmethod(register_providers)
    count_tokens = staticmethod(count_tokens)
