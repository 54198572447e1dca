"""SimpleProvider: one generator gives complete and stream; the core maps errors, counts usage,
honours max_tokens and stop, refuses the fields a provider does not take, and closes the
generator whatever ends the attempt. HTTP cases run against the fake server on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import httpx
import pytest
from squirrel_models import (
    AIRequest,
    ContextWindowExceeded,
    InvalidRequestError,
    MalformedResponse,
    Message,
    MidStreamError,
    ModelCard,
    ModelManager,
    ProviderConnectionError,
    ProviderSpec,
    ProviderTimeout,
    ProviderType,
    RateLimited,
    ServerError,
    SimpleProvider,
    StreamChunk,
    TokenCount,
    ToolCall,
    Usage,
    hookimpl,
)
from squirrel_models.answersize import MAX_ANSWER_BYTES
from squirrel_models.plugins import PluginManager
from squirrel_models.simple import CORE_FIELDS, HONOURED_BY_CORE, raise_for_status, sse_json, translate_error
from squirrel_models.testing.conformance import HTTPX_UNCLOSED, HTTPProviderConformance, ProviderConformance
from squirrel_models.testing.fake_server import PROMPT_TOKENS, FakeServer
from squirrel_models.tokens import upper_bound
from squirrel_models.upstream import choice_list, content_text, message_dict

from ..support.ports import closed_port

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings(f"ignore:{HTTPX_UNCLOSED}:ResourceWarning")]


@attrs.frozen
class Options:
    base_url: str = "http://127.0.0.1:9/v1"
    timeout: float = 1.0
    read_body: bool = True


class Chat(SimpleProvider):
    """An OpenAI-style chat provider, as a plugin author would write it."""

    supports = frozenset({"max_tokens", "stop", "temperature", "tools"})
    default_models = ("ok",)

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        # The timeout is the read timeout the tests mean (a hanging answer); a connect to the
        # local server may take longer on a loaded machine (a ConnectTimeout failed the
        # success path at 0.5 s, load 10).
        self.client = httpx.AsyncClient(base_url=self.options.base_url,
                                        timeout=httpx.Timeout(self.options.timeout, connect=30.0))

    async def generate(self, model: ModelCard, request: AIRequest) -> AsyncIterator[Any]:
        body: dict[str, Any] = {"model": model.model, "stream": True, "stream_options": {"include_usage": True},
                                "messages": [message_dict(m) for m in request.messages],
                                "max_tokens": request.max_tokens, "stop": list(request.stop) or None}
        if request.tools:
            body |= {"tools": list(request.tools), "tool_choice": request.tool_choice}
        async with self.client.stream("POST", "/chat/completions", json=body) as response:
            if self.options.read_body:
                await raise_for_status(response)
            else:
                response.raise_for_status()
            async for event in sse_json(response):
                for choice in choice_list(event.get("choices")):
                    delta = choice["delta"]
                    for call in delta.get("tool_calls") or ():
                        from squirrel_models import ToolCallDelta

                        fn = call.get("function") or {}
                        yield StreamChunk(tool_calls=(ToolCallDelta(call["index"], call.get("id"), fn.get("name"),
                                                                    fn.get("arguments") or ""),))
                    yield content_text(delta.get("content"))
                if event.get("usage"):
                    yield Usage(event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"])

    async def aclose(self) -> None:
        await self.client.aclose()


class Words(SimpleProvider):
    """An in-process model: yields the words of a script, counts a token a word."""

    default_models = ("words",)

    def __init__(self, spec: ProviderSpec, script: list[Any] | None = None, tokenizer: bool = False) -> None:
        super().__init__(spec)
        self.script = script if script is not None else ["one ", "two ", "three ", "four ", "five"]
        self.tokenizer = tokenizer
        self.closed = 0
        self.started = 0

    async def generate(self, model: ModelCard, request: AIRequest) -> AsyncIterator[Any]:
        self.started += 1
        try:
            for item in self.script:
                if isinstance(item, BaseException):
                    raise item
                if item == "sleep":
                    await anyio.sleep(60)
                    continue
                yield item
                await anyio.lowlevel.checkpoint()
        finally:
            self.closed += 1

    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> int | None:
        if not self.tokenizer:
            return None
        if request is not None:
            return sum(len(m.content.split()) + 2 for m in request.messages)
        return len((text or "").split())


def words(script: list[Any] | None = None, *, tokenizer: bool = False) -> Words:
    return Words(ProviderSpec("w", "words", None), script, tokenizer)


REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=50)


async def model_of(p: SimpleProvider) -> ModelCard:
    return (await p.list_models())[0]


async def stream_all(p: SimpleProvider, model: ModelCard, request: AIRequest) -> list[StreamChunk]:
    return [c async for c in p.stream(model, request)]


# --- one generator, complete and stream -------------------------------------------------------


async def test_complete_and_stream_come_from_one_generator() -> None:
    p = words()
    model = await model_of(p)
    assert model.id == "w/words" and model.provider_type == "words" and {"streaming", "stop"} <= model.features
    resp = await p.complete(model, REQUEST)
    assert (resp.text, resp.finish_reason) == ("one two three four five", "stop")
    assert resp.usage == Usage(upper_bound(REQUEST).tokens, len(resp.text), source="estimated")
    chunks = await stream_all(p, model, REQUEST)
    assert [c.text for c in chunks[:-1]] == ["one ", "two ", "three ", "four ", "five"]
    assert chunks[-1].usage == resp.usage and chunks[-1].finish_reason == "stop"
    assert p.closed == 2


async def test_the_models_tokenizer_counts_usage_and_answers_the_hook() -> None:
    p = words(tokenizer=True)
    model = await model_of(p)
    resp = await p.complete(model, REQUEST)
    assert resp.usage == Usage(4, 5, source="counted")
    counter = PluginManager(load_entry_points=False).token_counter(lambda m: p)
    count = counter(model, REQUEST, None)
    assert count is not None and (count.tokens, count.exact) == (4, True)
    assert PluginManager(load_entry_points=False).token_counter(lambda m: words())(model, REQUEST, None) is None


async def test_a_failing_tokenizer_falls_back_to_the_upper_bound(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Words):
        def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> int | None:
            raise RuntimeError("tokenizer exploded")

    p = Broken(ProviderSpec("w", "words", None))
    resp = await p.complete(await model_of(p), REQUEST)
    assert resp.usage.source == "estimated" and resp.usage.input_tokens == upper_bound(REQUEST).tokens
    assert "count_tokens failed" in caplog.text


async def test_what_a_provider_supports_shows_on_its_cards() -> None:
    class Rich(Words):
        supports = frozenset({"tools", "response_format", "images"})

    (card,) = await Rich(ProviderSpec("w", "words", None)).list_models()
    assert {"tools", "json_mode", "json_schema", "stop", "streaming"} <= card.features
    assert card.capabilities == {"chat", "vision"}
    (plain,) = await words().list_models()
    assert not {"tools", "json_mode", "json_schema"} & plain.features and plain.capabilities == {"chat"}


async def test_reported_usage_wins() -> None:
    p = words(["hi", Usage(7, 1)])
    resp = await p.complete(await model_of(p), REQUEST)
    assert resp.usage == Usage(7, 1, source="reported")


async def test_configured_models_and_overrides_make_the_cards() -> None:
    from squirrel_models import ModelOverride, Price

    spec = ProviderSpec("w", "words", None, models=(ModelOverride("big", price=Price(1, 2), context_window=9000),))
    cards = await Words(spec).list_models()
    assert [(c.id, c.context_window, c.price) for c in cards] == [("w/big", 9000, Price(1, 2))]

    class Discovering(Words):
        async def models(self) -> list[str]:
            self.asked = True
            return ["found", "big"]

    p = Discovering(spec)
    assert [(c.id, c.price) for c in await p.list_models()] == [("w/found", None), ("w/big", Price(1, 2))]
    p = Discovering(attrs.evolve(spec, models=(ModelOverride("declared"),), discover=False))
    assert [c.id for c in await p.list_models()] == ["w/declared"] and not hasattr(p, "asked")


# --- what the core honours itself ------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", [False, True], ids=["bytes", "tokenizer"])
async def test_max_tokens_cuts_the_output_and_closes_the_generator(tokenizer: bool) -> None:
    p = words(["one ", "two ", "three ", "sleep"], tokenizer=tokenizer)
    model = await model_of(p)
    request = attrs.evolve(REQUEST, max_tokens=2 if tokenizer else 6)
    with anyio.fail_after(5):
        resp = await p.complete(model, request)
    assert (resp.text, resp.finish_reason) == ("one tw" if not tokenizer else "one two ", "length")
    assert resp.usage.output_tokens <= request.max_tokens  # type: ignore[operator]
    assert p.closed == 1


async def test_stop_split_across_pieces_ends_the_answer() -> None:
    p = words(["hello ST", "OP world", "sleep"])
    model = await model_of(p)
    request = attrs.evolve(REQUEST, stop=["STOP"])
    with anyio.fail_after(5):
        resp = await p.complete(model, request)
        chunks = await stream_all(p, model, request)
    assert (resp.text, resp.finish_reason) == ("hello ", "stop")
    assert "".join(c.text for c in chunks) == "hello " and chunks[-1].finish_reason == "stop"
    assert p.closed == 2


async def test_held_back_text_is_released_at_the_end() -> None:
    p = words(["ab", "c"])
    resp = await p.complete(await model_of(p), attrs.evolve(REQUEST, stop=["cd", "xyz"]))
    assert resp.text == "abc"


# --- refused fields --------------------------------------------------------------------------

#: A value for every request field a provider may be asked to honour. A field added to AIRequest
#: must be added here: the test below then proves it is refused until a provider declares it.
SAMPLES: dict[str, Any] = {
    "max_tokens": 5, "temperature": 0.5, "stop": ["x"], "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "response_format": {"type": "json_object"}, "top_p": 0.5, "seed": 7, "n": 2, "user": "u-1",
    "extra": {"logprobs": True},
}


def test_every_request_field_has_a_sample() -> None:
    fields = {f.name for f in attrs.fields(AIRequest) if f.init} - CORE_FIELDS
    assert fields <= set(SAMPLES), f"add a sample value for {sorted(fields - set(SAMPLES))}"


@pytest.mark.parametrize("field", sorted(SAMPLES))
async def test_a_field_not_declared_is_refused_unless_the_core_honours_it(field: str) -> None:
    if field not in {f.name for f in attrs.fields(AIRequest)}:
        pytest.skip(f"AIRequest has no field {field}")
    p = words()
    model = await model_of(p)
    request = attrs.evolve(REQUEST, **{field: SAMPLES[field]})
    if field in HONOURED_BY_CORE:
        await p.complete(model, request)
        return
    for call in (p.complete(model, request), stream_all(p, model, request)):
        with pytest.raises(InvalidRequestError) as info:
            await call
        assert info.value.model_specific and not info.value.retryable
        assert repr(field) in str(info.value) and info.value.model_id == "w/words"
    assert p.started == 0  # refused before any call

    class Declared(Words):
        supports = frozenset({"tools" if field == "tool_choice" else field})

    ok = Declared(ProviderSpec("w", "words", None))
    await ok.complete(model, request)


async def test_images_need_images_and_text_parts_need_nothing() -> None:
    from squirrel_models.types import ImagePart, TextPart

    p = words()
    model = await model_of(p)
    text_only = AIRequest([Message("user", (TextPart("hello "), TextPart("there")))])
    assert (await p.complete(model, text_only)).text
    pictured = AIRequest([Message("user", (TextPart("what is this?"), ImagePart("https://example.test/a.png")))])
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content"):
        await p.complete(model, pictured)

    class Vision(Words):
        supports = frozenset({"images"})

    assert (await Vision(ProviderSpec("w", "words", None)).complete(model, pictured)).text


async def test_a_text_response_format_asks_for_nothing() -> None:
    p = words()
    await p.complete(await model_of(p), attrs.evolve(REQUEST, response_format="text"))


async def test_tool_messages_need_tools() -> None:
    p = words()
    call = ToolCall("c1", "f", "{}")
    request = AIRequest([Message.user("hi"), Message.assistant("", [call]), Message.tool("42", "c1")])
    with pytest.raises(InvalidRequestError, match=r"messages\[1\]\.tool_calls"):
        await p.complete(await model_of(p), request)


async def test_a_count_tokens_hook_counts_the_usage_of_a_provider_without_a_tokenizer() -> None:
    """docs/hooks.md: an exact count from a ``count_tokens`` hook makes the usage "counted". A
    SimpleProvider's usage came from its own ``count_tokens`` method only, so a plugin that
    brings the tokenizer as a hook left it "estimated" (the UTF-8 byte bound)."""

    class Plugin:
        @hookimpl
        def register_providers(self) -> list[ProviderType]:
            return [ProviderType("words", lambda spec: Words(spec))]

        @hookimpl
        def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> TokenCount | None:
            if model.provider_type != "words":
                return None
            content = request.text() if request is not None else text or ""
            return TokenCount(len(content.split()), exact=True, method="a word a token")

    pm = PluginManager(load_entry_points=False)
    pm.register(Plugin(), "words-plugin")
    cfg = {"providers": [{"name": "w", "type": "words", "models": [{"name": "words", "price": {"input": 0,
                                                                                               "output": 0}}]}]}
    async with ModelManager(cfg, plugins=pm) as mm:
        response = await mm.complete(AIRequest.from_prompt("say five words"))
        async with mm.stream(AIRequest.from_prompt("say five words")) as stream:
            chunks = [c async for c in stream]
    assert response.usage.source == "counted"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 5)
    assert chunks[-1].usage is not None and chunks[-1].usage.source == "counted"
    # the provider's own tokenizer, where it has one, still comes first
    p = words(tokenizer=True)
    assert (await p.complete(await model_of(p), REQUEST)).usage.input_tokens == 2 + 2


async def test_refusal_lets_the_manager_fall_back() -> None:
    class Plugin:
        @hookimpl
        def register_providers(self) -> list[ProviderType]:
            return [ProviderType("words", lambda spec: Words(spec))]

    from squirrel_models.testing import ScriptedPlugin

    pm = PluginManager(load_entry_points=False)
    pm.register(Plugin(), "words-plugin")
    pm.register(ScriptedPlugin(), "scripted")
    free = {"input": 0, "output": 0}
    cfg = {"providers": [{"name": "w", "type": "words", "models": [{"name": "words", "price": free}]},
                         {"name": "s", "type": "scripted", "options": {"models": ["echo"]},
                          "models": [{"name": "echo", "price": {"input": 1, "output": 1}}]}],
           "fallback": {"max_attempts": 3}}
    async with ModelManager(cfg, plugins=pm) as mm:
        plain = await mm.complete(AIRequest.from_prompt("hi"))
        hot = await mm.complete(AIRequest.from_prompt("hi", temperature=0.2))
    assert plain.model == "w/words"
    assert hot.model == "s/echo" and hot.attempts[0].model_id == "w/words"


# --- failures --------------------------------------------------------------------------------


async def test_a_server_down_at_start_up_names_the_provider_the_step_and_the_way_out() -> None:
    """A provider that lists its models from its server (none configured), whose server is
    not there: the error said only "connection failed (to 127.0.0.1:P)", not which provider
    failed, that it was listing its models at start-up, nor what to do. It keeps its type."""

    class Listing(Chat):
        async def models(self) -> list[str]:
            response = await self.client.get("/models")
            return [m["id"] for m in response.json()["data"]]

    class Plugin:
        @hookimpl
        def register_providers(self) -> list[ProviderType]:
            return [ProviderType("listing", lambda spec: Listing(spec), options_type=Options)]

    pm = PluginManager(load_entry_points=False)
    pm.register(Plugin(), "listing-plugin")
    port = closed_port()  # nothing listens on it
    cfg = {"providers": [{"name": "ok", "type": "scripted", "options": {"models": ["echo"]}},
                         {"name": "local", "type": "listing",
                          "options": {"base_url": f"http://127.0.0.1:{port}/v1"}}]}
    from squirrel_models.testing import ScriptedPlugin

    pm.register(ScriptedPlugin(), "scripted")
    with pytest.raises(ProviderConnectionError) as info:
        async with ModelManager(cfg, plugins=pm):
            pass
    message = str(info.value)
    assert message.startswith("provider 'local' (providers[1]): listing its models at start-up failed: ")
    assert "start its server" in message and "discover = false" in message
    # with its models configured and discover = false, it starts without asking the server
    cfg["providers"][1] |= {"discover": False, "models": [{"name": "m", "price": {"input": 0, "output": 0}}]}
    async with ModelManager(cfg, plugins=pm) as mm:
        assert "local/m" in mm.selector.models


async def test_socket_errors_are_connection_errors() -> None:
    import socket

    for bad in (socket.gaierror(-2, "Name or service not known"), ConnectionResetError(104, "reset"),
                BrokenPipeError(32, "broken pipe"), OSError(113, "No route to host")):
        p = words([bad])
        with pytest.raises(ProviderConnectionError):
            await p.complete(await model_of(p), REQUEST)
    p = words([TimeoutError()])
    with pytest.raises(ProviderTimeout):
        await p.complete(await model_of(p), REQUEST)


async def test_decoding_errors_are_malformed_responses() -> None:
    for bad in (KeyError("choices"), IndexError("list index"), TypeError("'NoneType'"), ValueError("bad"),
                RecursionError("maximum recursion depth exceeded"), AttributeError("'list' has no 'get'")):
        p = words(["a", bad])
        with pytest.raises(MalformedResponse) as info:
            await p.complete(await model_of(p), REQUEST)
        assert info.value.__cause__ is not None and info.value.usage is not None  # charged what came


async def test_a_plugin_bug_yielding_a_wrong_type_is_not_hidden() -> None:
    p = words([b"bytes"])
    with pytest.raises(TypeError, match="yield text"):
        await p.complete(await model_of(p), REQUEST)


async def test_failure_after_the_first_chunk_is_mid_stream() -> None:
    p = words(["one ", "two ", ServerError("boom", status_code=500)])
    received: list[str] = []
    with pytest.raises(MidStreamError) as info:
        async for c in p.stream(await model_of(p), REQUEST):
            received.append(c.text)
    assert info.value.partial_text == "one two " == "".join(received)
    assert info.value.usage is not None and info.value.usage.output_tokens == len("one two ")
    assert isinstance(info.value.__cause__, ServerError)


async def test_closing_a_stream_early_closes_the_generator() -> None:
    p = words(["one ", "sleep"])
    with anyio.fail_after(5):
        async with contextlib_aclosing(p.stream(await model_of(p), REQUEST)) as it:
            async for _ in it:
                break
    assert p.closed == 1


async def test_cancelling_closes_the_generator() -> None:
    p = words(["one ", "sleep"])
    model = await model_of(p)
    with anyio.move_on_after(0.2):
        await p.complete(model, REQUEST)
    assert p.closed == 1


def contextlib_aclosing(it: Any) -> Any:
    import contextlib

    return contextlib.aclosing(it)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(models=("ok",)) as s:
        yield s


@pytest.fixture
async def chat(server: FakeServer) -> AsyncIterator[Chat]:
    p = Chat(ProviderSpec("chat", "chat", Options(base_url=server.base_url, timeout=0.5)))
    yield p
    await p.aclose()


@pytest.mark.parametrize(("behaviour", "expected"), [
    ("error:500", ServerError), ("rate-limit:0.5", RateLimited), ("hang", ProviderTimeout),
    ("reset", ProviderConnectionError), ("malformed-stream", MalformedResponse),
    ("context", ContextWindowExceeded),
])
async def test_http_failures_map_at_the_boundary(chat: Chat, server: FakeServer, behaviour: str,
                                                 expected: type[Exception]) -> None:
    model = await model_of(chat)
    server.script("ok", behaviour)
    with anyio.fail_after(5), pytest.raises(expected) as info:
        await chat.complete(model, REQUEST)
    if behaviour != "malformed-stream":  # json_body raises MalformedResponse itself
        assert isinstance(info.value.__cause__, Exception)
    assert info.value.model_id == "chat/ok" and info.value.provider == "chat"  # type: ignore[attr-defined]
    if expected is RateLimited:
        assert info.value.retry_after == 0.5  # type: ignore[attr-defined]
    if expected is ContextWindowExceeded:
        assert info.value.window == 2048  # type: ignore[attr-defined]  # the body was read


async def test_raise_for_status_on_an_unread_stream_still_maps(server: FakeServer) -> None:
    p = Chat(ProviderSpec("chat", "chat", Options(base_url=server.base_url, read_body=False)))
    server.script("ok", "error:503")
    with pytest.raises(ServerError) as info:
        await p.complete(await model_of(p), REQUEST)
    await p.aclose()
    assert info.value.status_code == 503 and isinstance(info.value.__cause__, Exception)


async def test_http_answer_with_reported_usage(chat: Chat, server: FakeServer) -> None:
    resp = await chat.complete(await model_of(chat), REQUEST)
    assert resp.usage.source == "reported" and resp.usage.input_tokens == PROMPT_TOKENS
    assert resp.text.startswith("Hello")


class TestHTTPConformance(HTTPProviderConformance):
    @pytest.fixture
    async def provider(self, fake_server: FakeServer) -> AsyncIterator[Chat]:
        p = Chat(ProviderSpec("chat", "chat", Options(base_url=fake_server.base_url, timeout=self.timeout)))
        yield p
        await p.aclose()


class TestInProcessConformance(ProviderConformance):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[Words]:
        p = Words(ProviderSpec("w", "words", None), ["Hello ", "there, ", "nice ", "to ", "meet ", "you."])
        yield p
        await p.aclose()


LEAKY = '''
import httpx, pytest
from squirrel_models import ModelCard, ProviderResponse, Usage
from squirrel_models.testing.conformance import HTTPProviderConformance

pytestmark = pytest.mark.anyio


class Leaky:
    """Calls the server without a boundary: httpx's own exceptions get out."""

    name = "leaky"

    def __init__(self, base_url):
        self.client = httpx.AsyncClient(base_url=base_url, timeout=1.0)

    async def list_models(self):
        return [ModelCard.for_provider("leaky", "ok")]

    async def complete(self, model, request):
        r = await self.client.post("/chat/completions", json={"model": model.model, "messages": []})
        r.raise_for_status()
        return ProviderResponse(r.json()["choices"][0]["message"]["content"], Usage(1, 1))

    async def stream(self, model, request):
        yield await self.complete(model, request)

    async def aclose(self):
        await self.client.aclose()


class TestLeaky(HTTPProviderConformance):
    @pytest.fixture
    async def provider(self, fake_server):
        p = Leaky(fake_server.base_url)
        yield p
        await p.aclose()
'''


def test_a_provider_leaking_httpx_errors_fails_the_kit(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "test_leaky.py").write_text(LEAKY)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                           "test_upstream_failures_are_the_core_error_types and 500 and complete and asyncio",
                           str(tmp_path / "test_leaky.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "raised httpx.HTTPStatusError, not ServerError" in done.stdout
    assert re.search(r"\b1 failed\b", done.stdout), done.stdout[-2000:]


# --- typed event streams (an Anthropic Messages-style API) ------------------------------------


def _events(*names: str) -> bytes:
    return "".join(f'event: {n}\ndata: {{"type": "{n}"}}\n\n' for n in names).encode()


async def _read(body: bytes, **kw: Any) -> list[Any]:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body,
                                                             headers={"content-type": "text/event-stream"}))
    async with httpx.AsyncClient(transport=transport) as client, client.stream("POST", "http://x/") as response:
        return [event["type"] async for event in sse_json(response, **kw)]


async def test_sse_json_ends_at_the_end_event_and_knows_a_cut_stream() -> None:
    """An API that ends its stream with a typed event (``event: message_stop``) rather than a
    ``[DONE]`` data marker: with ``done=None`` alone a stream cut before that event ended as
    if whole."""
    full = _events("message_start", "content_block_delta", "message_delta", "message_stop", "ping")
    assert await _read(full, end_event="message_stop") == ["message_start", "content_block_delta",
                                                           "message_delta"]
    with pytest.raises(ProviderConnectionError, match="ended before message_stop: cut short"):
        await _read(_events("message_start", "content_block_delta"), end_event="message_stop")
    # the event type lasts one event: a data line after the blank line is not message_stop
    lone = b"event: message_stop\n\ndata: {\"type\": \"x\"}\n\n"
    assert await _read(lone + _events("message_stop"), end_event="message_stop") == ["x"]


# --- answers past the core's bound --------------------------------------------------------------


class _Endless(httpx.AsyncByteStream):
    """``first``, then ``CHUNK`` for ever (counting what was taken), or gzip of that."""

    def __init__(self, first: bytes) -> None:
        self.first, self.taken = first, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        while self.taken < 4 * MAX_ANSWER_BYTES:  # ends a test that fails, not one that passes
            self.taken += 65536
            yield b"a" * 65536


def _endless(status: int, first: bytes, kind: str = "text/event-stream") -> tuple[httpx.AsyncClient, _Endless]:
    body = _Endless(first)
    transport = httpx.MockTransport(lambda r: httpx.Response(status, stream=body, headers={"content-type": kind}))
    return httpx.AsyncClient(transport=transport), body


@pytest.mark.parametrize("where", ["event", "error body"])
async def test_an_answer_past_the_bound_is_malformed_not_read_on(where: str) -> None:
    """sse_json read a line without end whole (httpx's aiter_lines), and raise_for_status an
    error body without end, into memory until the deadline."""
    client, body = _endless(500 if where == "error body" else 200, b'data: {"x": "')
    async with client, client.stream("POST", "http://x/") as response:
        with pytest.raises(MalformedResponse, match="larger than 64 MiB"):
            await raise_for_status(response)
            async for _ in sse_json(response):
                pass
    assert body.taken < 2 * MAX_ANSWER_BYTES


async def test_an_error_body_read_within_the_bound_keeps_its_meaning() -> None:
    """A gzip error body: read decoded, then mapped by its status and its own words."""
    raw = gzip.compress(json.dumps({"error": {"message": "too long", "code": "context_length_exceeded"}}).encode())
    transport = httpx.MockTransport(lambda r: httpx.Response(
        400, content=raw, headers={"content-type": "application/json", "content-encoding": "gzip"}))
    async with httpx.AsyncClient(transport=transport) as client, client.stream("POST", "http://x/") as response:
        with pytest.raises(httpx.HTTPStatusError) as info:
            await raise_for_status(response)
    assert info.value.response.json()["error"]["code"] == "context_length_exceeded"
    assert isinstance(translate_error(info.value), ContextWindowExceeded)


async def test_a_line_separator_in_an_event_is_text_not_a_line_break() -> None:
    """httpx's aiter_lines ends lines where str.splitlines does: a raw U+2028 (or U+0085) in
    an event's JSON text, which servers writing UTF-8 JSON send, cut the event in two."""
    body = 'data: {"type": "a\u2028b\x85c"}\r\n\r\ndata: {"type": "e"}\rdata: [DONE]\n\n'.encode()
    assert await _read(body) == ["a\u2028b\x85c", "e"]
