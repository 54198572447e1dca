"""The conformance suites of providers: :class:`ProviderConformance` for any provider,
:class:`HTTPProviderConformance` for one that calls an OpenAI-compatible HTTP API (against the
core's fake server)."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Iterator, Sequence
from typing import ClassVar, cast

import anyio
import attrs
import pytest

from ...errors import (
    AuthenticationError,
    ContextWindowExceeded,
    InvalidRequestError,
    MalformedResponse,
    MidStreamError,
    ModelError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from ...providers import Provider
from ...types import AIRequest, ModelCard, ProviderResponse, StreamChunk
from ..fake_server import PROMPT_TOKENS, FakeServer

__all__ = ["HTTPX_UNCLOSED", "PROMPT", "WEATHER_TOOL", "HTTPProviderConformance", "ProviderConformance"]

#: An OpenAI-format tool definition, for the checks that tools are honoured or refused.
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

#: The warning trio gives for httpx's (and huggingface_hub's copies') unclosed body generators.
HTTPX_UNCLOSED = "Async generator 'http(x|core)2?\\..*was garbage collected"

#: The request the checks send: only what every provider must honour (messages, max_tokens).
PROMPT = AIRequest.from_prompt("Say hello in one short sentence.", max_tokens=16)
#: The shortest piece of a secret that counts as showing it (a key cut short is still a leak).
SECRET_PIECE = 10


def _texts(exc: BaseException) -> list[str]:
    """Every text an error shows, and each exception on its cause chain: message, repr and
    the traceback's line for it (its notes too). Not the traceback's source lines and file
    paths: a key with a word in it ("sk-conformance-...") would match those."""
    out: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out += [str(cur), repr(cur), "".join(traceback.format_exception_only(cur))]
        cur = cur.__cause__ or cur.__context__
    return out


def _leaked(texts: Iterable[str], secrets: Sequence[str]) -> list[str]:
    """The secrets (masked) that ``texts`` show whole or by a piece of :data:`SECRET_PIECE`
    characters. Matched here, not by the core's redaction registry: a provider that never
    registered its key would otherwise pass."""
    joined = "\n".join(texts)
    found = []
    for secret in secrets:
        n = min(SECRET_PIECE, len(secret))
        if any(secret[i:i + n] in joined for i in range(len(secret) - n + 1)):
            found.append(secret[:3] + "***")
    return found


class ProviderConformance:
    """Checks the provider contract of :mod:`squirrel_models.providers`."""

    #: True for a provider that sends tools upstream for every model and lets the upstream
    #: decide (an OpenAI-compatible API): a card without the ``tools`` feature may then take
    #: them. False: such a card must refuse them. (:class:`HTTPProviderConformance` checks
    #: what was sent instead.)
    passes_tools_through: ClassVar[bool] = False

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return ()

    @pytest.fixture
    def request_(self) -> AIRequest:
        return PROMPT

    async def _model(self, provider: Provider) -> ModelCard:
        models = await provider.list_models()
        assert models, "a provider must list at least one model"
        return models[0]

    async def test_lists_model_cards(self, provider: Provider) -> None:
        models = await provider.list_models()
        assert models and all(isinstance(m, ModelCard) for m in models)
        ids = [m.id for m in models]
        assert len(set(ids)) == len(ids), "model ids must be unique"
        for m in models:
            assert m.id == f"{provider.name}/{m.model}"
            assert m.provider == provider.name
            assert m.context_window > 0

    async def test_complete_returns_text_and_usage(self, provider: Provider,
                                                   request_: AIRequest) -> None:
        model = await self._model(provider)
        resp = await provider.complete(model, request_)
        assert isinstance(resp, ProviderResponse)
        assert isinstance(resp.text, str)
        assert resp.usage.input_tokens > 0
        assert resp.usage.output_tokens >= 0
        assert resp.usage.cached_tokens <= resp.usage.input_tokens
        assert resp.usage.reasoning_tokens <= resp.usage.output_tokens
        if request_.max_tokens is not None:
            assert resp.usage.output_tokens <= request_.max_tokens

    async def test_stream_ends_with_usage(self, provider: Provider,
                                          request_: AIRequest) -> None:
        model = await self._model(provider)
        chunks: list[StreamChunk] = []
        async for chunk in provider.stream(model, request_):
            assert isinstance(chunk, StreamChunk)
            chunks.append(chunk)
        assert chunks, "a stream yields at least its final chunk"
        last_usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
        assert last_usage is not None, "the last chunk of a stream carries usage"
        assert last_usage.input_tokens > 0
        text = "".join(c.text for c in chunks)
        if request_.max_tokens is not None:
            assert last_usage.output_tokens <= request_.max_tokens
        assert isinstance(text, str)

    async def test_stream_closed_early_leaves_provider_usable(
            self, provider: Provider, request_: AIRequest) -> None:
        model = await self._model(provider)
        it = provider.stream(model, request_).__aiter__()
        await it.__anext__()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
        resp = await provider.complete(model, request_)
        assert isinstance(resp.text, str)

    async def test_cancelled_call_leaves_provider_usable(
            self, provider: Provider, request_: AIRequest) -> None:
        model = await self._model(provider)
        with anyio.move_on_after(0.001):
            await provider.complete(model, request_)
        resp = await provider.complete(model, request_)
        assert isinstance(resp.text, str)

    async def test_no_secret_in_repr(self, provider: Provider, secrets: Sequence[str]) -> None:
        text = repr(provider) + str(provider) + repr(await provider.list_models())
        for s in secrets:
            assert s not in text

    async def test_errors_are_model_errors(self, provider: Provider, secrets: Sequence[str]) -> None:
        """A model the provider does not serve fails with a ModelError, not a raw exception."""
        model = await self._model(provider)
        bogus = ModelCard.for_provider(provider.name, "no-such-model-xyz",
                                       provider_type=model.provider_type,
                                       context_window=model.context_window)
        error: ModelError | None = None
        try:
            await provider.complete(bogus, PROMPT)
        except ModelError as exc:
            error = exc
        # Some providers (a single local model) ignore the model name: answering is fine.
        if error is not None:
            assert not _leaked(_texts(error), secrets), "a secret shows in the error"

    # --- request fields: honoured or refused, never dropped --------------------------------

    async def _complete_or_refused(self, provider: Provider, model: ModelCard, request: AIRequest
                                   ) -> ProviderResponse | None:
        """The answer, or None when the provider refused the request as this model's limit
        (:class:`InvalidRequestError`): anything else it raises fails the test."""
        try:
            return await provider.complete(model, request)
        except InvalidRequestError:
            return None

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_max_tokens_honoured_or_refused(self, provider: Provider, request_: AIRequest,
                                                  streamed: bool) -> None:
        """An answer never counts more output tokens than ``max_tokens`` allowed."""
        model = await self._model(provider)
        request = attrs.evolve(request_, max_tokens=2)
        if streamed:
            try:
                chunks = [c async for c in provider.stream(model, request)]
            except InvalidRequestError:
                return
            usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
            assert usage is not None, "the last chunk of a stream carries usage"
        else:
            resp = await self._complete_or_refused(provider, model, request)
            if resp is None:
                return
            usage = resp.usage
        assert usage.output_tokens <= 2, f"max_tokens=2 but {usage.output_tokens} output tokens"

    async def test_stop_honoured_or_refused(self, provider: Provider, request_: AIRequest) -> None:
        """A stop sequence taken from an answer never appears in the answer to a request
        that sets it."""
        model = await self._model(provider)
        first = await provider.complete(model, request_)
        words = first.text.split()
        stop = words[len(words) // 2] if len(words) >= 2 else "e"
        resp = await self._complete_or_refused(provider, model, attrs.evolve(request_, stop=[stop]))
        if resp is not None:
            assert stop not in resp.text, f"stop={stop!r} was not honoured: {resp.text!r}"

    async def test_tools_honoured_or_refused(self, provider: Provider, request_: AIRequest) -> None:
        """A model whose card does not list the ``tools`` feature refuses a request with tools
        (dropping them would answer another question); one that lists it takes them."""
        model = await self._model(provider)
        request = attrs.evolve(request_, tools=[WEATHER_TOOL], tool_choice="auto")
        resp = await self._complete_or_refused(provider, model, request)
        if "tools" in model.features:
            assert resp is not None, "a model whose card lists tools refused tools"
        elif not self.passes_tools_through:
            assert resp is None, "tools were dropped: refuse them with InvalidRequestError(model_specific=True)"

    async def test_usage_is_reported_or_marked(self, provider: Provider, request_: AIRequest) -> None:
        """Usage says where it comes from, and a count the provider made up is not
        ``reported``: an answer of some text counts some output tokens."""
        model = await self._model(provider)
        resp = await provider.complete(model, request_)
        assert resp.usage.source in ("reported", "counted", "estimated")
        if resp.text.strip():
            assert resp.usage.output_tokens > 0, "an answer with text used no output tokens?"


class HTTPProviderConformance(ProviderConformance):
    """:class:`ProviderConformance` plus the faults of an HTTP upstream, played by the fake
    OpenAI-style server (:class:`~squirrel_models.testing.fake_server.FakeServer`) on
    127.0.0.1. Build the ``provider`` fixture against the ``fake_server`` fixture, with an
    upstream timeout of :attr:`timeout` seconds::

        class TestMyProvider(HTTPProviderConformance):
            @pytest.fixture
            async def provider(self, fake_server):
                p = MyProvider(base_url=fake_server.base_url, timeout=self.timeout)
                yield p
                await p.aclose()

    Each check queues a behaviour for the next request to the provider's first model and
    expects the core's error type: a provider that lets ``httpx.HTTPStatusError`` (or any
    other foreign exception) out fails. The server honours ``max_tokens`` and ``stop``, and
    answers with usage (12 prompt tokens, a token a word) unless told not to.

    Give the ``secrets`` fixture the key the provider fixture configures (the provider must
    send it, as ``Authorization: Bearer``): the server echoes it in its errors, as real ones
    do, and no error may show it. A provider that sends a credential while ``secrets`` is
    empty fails. It also checks that a cancelled call ends at once (not at its own timeout)
    and that ``aclose()`` closes every connection the provider opened.
    """

    #: httpx leaves its own body generators to the garbage collector when a stream is
    #: abandoned (httpx #3686), which trio reports; not the provider's fault, so not an error.
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.anyio, pytest.mark.filterwarnings(f"ignore:{HTTPX_UNCLOSED}:ResourceWarning")]
    #: The upstream timeout the provider must be built with, in seconds.
    timeout: float = 1.0

    @pytest.fixture(autouse=True)
    def _no_secret_registered_before(self) -> Iterator[None]:
        """Each check starts with no secret registered for redaction (and ends with what was
        before): a key another test registered would otherwise hide one this provider never
        registered, and its leaks with it."""
        from ... import secrets as registry

        saved = registry._registry
        registry._registry = registry._Registry()
        try:
            yield
        finally:
            registry._registry = saved

    @pytest.fixture
    def fake_server(self) -> Iterator[FakeServer]:
        with FakeServer(models=("ok",)) as server:
            yield server

    @staticmethod
    async def _call(provider: Provider, model: ModelCard, streamed: bool) -> None:
        """One call of :data:`PROMPT`: ``complete``, or a ``stream`` read to its end."""
        if streamed:
            async for _ in provider.stream(model, PROMPT):
                pass
        else:
            await provider.complete(model, PROMPT)

    async def _play(self, provider: Provider, server: FakeServer, behaviour: str, *,
                    streamed: bool = False) -> BaseException:
        model = await self._model(provider)
        server.script(model.model, behaviour)
        try:
            await self._call(provider, model, streamed)
        except Exception as exc:
            return exc
        raise AssertionError(f"{behaviour!r}: the provider answered instead of failing")

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    @pytest.mark.parametrize(("behaviour", "expected"), [
        ("error:500", ServerError), ("error:502", ServerError), ("error:503", ServerError),
        ("rate-limit:0.25", RateLimited), ("quota", RateLimited), ("error:400", InvalidRequestError),
        ("auth", AuthenticationError), ("context", ContextWindowExceeded), ("reset", ProviderConnectionError),
        ("close", ProviderConnectionError), ("malformed", MalformedResponse), ("hang", ProviderTimeout),
    ])
    async def test_upstream_failures_are_the_core_error_types(
            self, provider: Provider, fake_server: FakeServer, behaviour: str, expected: type[ModelError],
            streamed: bool) -> None:
        if behaviour == "malformed" and streamed:
            behaviour = "malformed-stream"
        with anyio.fail_after(self.timeout * 3 + 5):
            exc = await self._play(provider, fake_server, behaviour, streamed=streamed)
        assert isinstance(exc, expected), (
            f"{behaviour!r} raised {type(exc).__module__}.{type(exc).__name__}, not {expected.__name__}")
        assert fake_server.requests == 1, "a provider makes one upstream attempt: retries are the core's"
        if behaviour.startswith("rate-limit"):
            assert cast(RateLimited, exc).retry_after == 0.25, "Retry-After was not read"

    @pytest.mark.parametrize("behaviour", ["reset-stream", "stream-error"])
    async def test_stream_broken_after_the_first_chunk_is_mid_stream(
            self, provider: Provider, fake_server: FakeServer, behaviour: str) -> None:
        model = await self._model(provider)
        fake_server.script(model.model, behaviour)
        received: list[str] = []
        with anyio.fail_after(self.timeout * 3 + 5), pytest.raises(MidStreamError) as info:
            async for chunk in provider.stream(model, PROMPT):
                received.append(chunk.text)
        assert "".join(received).startswith(info.value.partial_text) and info.value.partial_text
        assert info.value.usage is not None and info.value.usage.output_tokens > 0, \
            "the tokens received are charged"

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_usage_is_reported_or_marked_estimated(self, provider: Provider, fake_server: FakeServer,
                                                         streamed: bool) -> None:
        """The server's usage is passed on as ``reported``; without it, the provider's own count
        is ``counted`` or ``estimated``, never ``reported``."""
        model = await self._model(provider)
        for behaviour in ("ok", "no-usage"):
            fake_server.script(model.model, behaviour)
            if streamed:
                chunks = [c async for c in provider.stream(model, PROMPT)]
                usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
                assert usage is not None, "the last chunk of a stream carries usage"
            else:
                usage = (await provider.complete(model, PROMPT)).usage
            assert usage.input_tokens > 0 and usage.output_tokens > 0
            if behaviour == "no-usage":
                assert usage.source != "reported", "the server reported no usage: it is counted or estimated"
            elif usage.source == "reported":
                assert usage.input_tokens == PROMPT_TOKENS, "reported usage is the server's"

    async def test_tools_honoured_or_refused(self, provider: Provider, request_: AIRequest) -> None:
        """Covered by :meth:`test_request_fields_are_sent_or_refused`, which sees what was sent."""

    async def test_request_fields_are_sent_or_refused(self, provider: Provider, fake_server: FakeServer) -> None:
        """``max_tokens``, ``stop`` and tools either reach the server or are refused (or, for
        ``max_tokens`` and ``stop``, honoured on the answer as it arrives)."""
        model = await self._model(provider)
        request = attrs.evolve(PROMPT, max_tokens=3, stop=["nice"])
        resp = await self._complete_or_refused(provider, model, request)
        if resp is not None:
            sent = fake_server.payloads_seen[-1]
            assert resp.usage.output_tokens <= 3 or sent.get("max_tokens") == 3
            assert "nice" not in resp.text
        fake_server.script(model.model, "tool-call")
        request = attrs.evolve(PROMPT, tools=[WEATHER_TOOL], tool_choice="auto")
        resp = await self._complete_or_refused(provider, model, request)
        if resp is not None:
            sent = fake_server.payloads_seen[-1]
            assert sent.get("tools") == [WEATHER_TOOL], "tools were dropped: send them or refuse them"
            assert [c.name for c in resp.tool_calls] == ["get_weather"], "the model's tool call was lost"

    # --- secrets, cancellation, release ----------------------------------------------------

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    @pytest.mark.parametrize("behaviour", ["auth", "echo", "leak:message.whole", "leak:code.minus2",
                                           "leak:header.tail", "leak:type.head", "leak:stream.middle"])
    async def test_no_secret_in_errors(self, provider: Provider, fake_server: FakeServer, secrets: Sequence[str],
                                       behaviour: str, streamed: bool) -> None:
        """The server echoes the key it was sent in its error (as real ones do: a 401 quoting
        the key, a proxy's error listing the headers): no error shows it, whole or in part, in
        its message, repr or those of its causes."""
        with anyio.fail_after(self.timeout * 3 + 5):
            exc = await self._play(provider, fake_server, behaviour, streamed=streamed)
        headers = fake_server.headers_seen[-1] if fake_server.headers_seen else {}
        sent = " ".join(v for k, v in headers.items() if k.lower() in ("authorization", "x-api-key", "api-key"))
        if not secrets:
            assert not sent, ("the provider sends a credential: give the `secrets` fixture the key the "
                              "provider fixture configures, so the kit can check it never leaks")
            pytest.skip("the provider sends no credential")
        assert any(s in sent for s in secrets), (
            "the provider did not send the key listed in `secrets` (as Authorization: Bearer): "
            "configure the provider fixture with it")
        leaked = _leaked(_texts(exc), secrets)
        assert not leaked, (f"{behaviour!r}: the error shows the key ({', '.join(leaked)}): read it with "
                            "SimpleProvider.secret() or Secret.from_env() (which register it for redaction) "
                            "and raise through upstream.boundary")

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_cancelled_call_ends_at_once(self, provider: Provider, fake_server: FakeServer,
                                               streamed: bool) -> None:
        """A call cancelled while the upstream hangs ends then, with the cancellation: not at
        the provider's own timeout, and not as an answer or an error (a request's deadline is
        a cancellation; a provider that shields its call, or swallows the cancellation, keeps
        the request past it)."""
        model = await self._model(provider)
        fake_server.script(model.model, "hang")
        cut = min(0.2, self.timeout / 4)
        try:
            with anyio.move_on_after(cut) as scope:
                await self._call(provider, model, streamed)
        except Exception as exc:
            raise AssertionError(f"cancelled after {cut}s, the call went on until it raised "
                                 f"{type(exc).__name__}: a cancellation must end it at once") from exc
        assert scope.cancelled_caught, "the server never answered, yet the call returned: it swallowed the cancellation"

    async def test_aclose_closes_every_connection(self, provider: Provider, fake_server: FakeServer) -> None:
        """After a call, a stream closed early (while the server still sends it) and
        ``aclose()``, the server sees no connection of the provider's left open (within 5 s)."""
        model = await self._model(provider)
        await provider.complete(model, PROMPT)
        fake_server.script(model.model, "hang-stream")  # the server keeps this one open: the client must close it
        it = provider.stream(model, PROMPT).__aiter__()
        await it.__anext__()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
        await provider.aclose()
        for _ in range(250):  # the server's thread sees each close a moment later: 5 s at most
            if not fake_server.open_connections:
                break
            await anyio.sleep(0.02)
        assert fake_server.open_connections == 0, (
            f"{fake_server.open_connections} connection(s) still open after aclose(): close every response "
            "(async with) and the client in aclose()")
