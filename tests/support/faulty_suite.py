"""Tests an HTTP provider plugin runs through ModelManager against the faulty server: fallback,
deadlines, Retry-After, bounded attempts, hopeless errors, charged broken streams, and a canary
key that never leaks. Subclass in the plugin's tests (the class name must start with ``Test``)::

    class TestThroughManager(FaultyManagerSuite):
        provider_type = "openai"
        key_option, key_env, key = "api_key_env", CANARY_ENV, CANARY
        provider_entry = {"discover": False}

The suite uses the fixtures ``faulty`` (:func:`.faulty_server.faulty_fixtures`), ``canary_env``
(:func:`.canary.canary_env_fixture`), and the core's ``squirrel_manager`` and
``squirrel_metrics``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import pytest
from squirrel_models import (
    AIRequest,
    AuthenticationError,
    DeadlineExceeded,
    FallbackExhausted,
    Message,
    MidStreamError,
    ModelError,
    ModelRequirements,
    RateLimited,
    ServerError,
    SquirrelError,
    ToolCall,
)

from .canary import leaks, texts_of
from .faulty_server import TOOL_ARGUMENTS, TOOL_CALL_ID, FaultyServer, leak_behaviours
from .stalls import loop_stalls

__all__ = ["LEAK_BEHAVIOURS", "REQUEST", "TOOL_REQUEST", "FaultyManagerSuite"]

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}
TOOL_REQUEST = AIRequest.from_prompt("Weather in Paris?", max_tokens=32, tools=[WEATHER_TOOL], tool_choice="auto")
TOOL_CALL = ToolCall(TOOL_CALL_ID, "get_weather", TOOL_ARGUMENTS)
#: Every behaviour the canary test plays, complete and stream.
#: ``leak:<place>.<form>``: the server echoes the key in every place an error can show it, whole, in
#: fragments and escaped (see ``faulty_server.LEAK_FORMS``).
LEAK_BEHAVIOURS = ["auth", "echo", "error:500", "error:400", "rate-limit:0.01", "malformed", "reset", "close",
                   "hang", "truncate", "reset-stream", "stream-error", "malformed-stream", "context", "filter",
                   *leak_behaviours()]


class FaultyManagerSuite:
    """The tests; subclasses set the provider type and how it is given its key."""

    pytestmark = pytest.mark.anyio
    #: The plugin's provider type (``type`` in the configuration).
    provider_type: ClassVar[str]
    #: The option naming the key's environment variable, that variable, and the key itself.
    key_option: ClassVar[str]
    key_env: ClassVar[str]
    key: ClassVar[str]
    #: More fields of the provider's configuration entry (``{"discover": False}``).
    provider_entry: ClassVar[Mapping[str, Any]] = {}

    def config(self, server: FaultyServer, *models: str, max_attempts: int = 3, timeout: float = 5.0,
               provider_timeout: float = 0.5, **extra: Any) -> dict[str, Any]:
        """Models are priced in the given order (cheapest first), so they are tried in it."""
        return {"providers": [{"name": "faulty", "type": self.provider_type, **self.provider_entry,
                               "options": {"base_url": server.base_url, self.key_option: self.key_env,
                                           "timeout": provider_timeout},
                               "models": [{"name": m, "price": {"input": str(i + 1), "output": str(i + 1)}}
                                          for i, m in enumerate(models)]}],
                "fallback": {"max_attempts": max_attempts, "options": {"retry": {"base_delay": 0.01}}},
                "timeout": timeout, **extra}

    @pytest.mark.parametrize("bad", ["hang", "reset", "error:500", "malformed", "close"])
    async def test_fallback_to_a_working_model(self, squirrel_manager: Any, faulty: FaultyServer,
                                               canary_env: str, bad: str) -> None:
        async with squirrel_manager(self.config(faulty, bad, "ok")) as mm, \
                loop_stalls(cpu=time.process_time) as stalls:
            t0 = time.monotonic()
            resp = await mm.complete(REQUEST)
            took = stalls.elapsed(t0)
        assert resp.model == "faulty/ok" and resp.text
        # the bad model is cut at its 0.5 s provider timeout, far before the request's 5 s
        # (time the process was kept off the CPU is forgiven; the faulty server's thread's
        # work is not: it shares the interpreter)
        assert took < 3.0, (took, stalls)
        assert faulty.requests <= 3 and faulty.by_model["ok"] == 1
        assert [a.outcome for a in resp.attempts][-1] == "ok"

    @pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
    async def test_tool_calls_round_trip(self, squirrel_manager: Any, faulty: FaultyServer, canary_env: str,
                                         streamed: bool) -> None:
        """A tool-call answer comes back in ``tool_calls`` (streamed pieces assembled), is charged,
        and the follow-up turn sends the assistant's calls and the tool's result upstream."""
        cfg = self.config(faulty, "tool-call")
        cfg["providers"][0]["models"][0]["features"] = ["streaming", "system_prompt", "tools"]
        need = ModelRequirements(required_features={"tools"})
        async with squirrel_manager(cfg) as mm:
            if streamed:
                async with mm.stream(TOOL_REQUEST, need) as s:
                    chunks = [c async for c in s]
                resp = s.response
                assert resp is not None
                assert sum(len(c.tool_calls) for c in chunks) == 4  # id and name, then three fragments
            else:
                resp = await mm.complete(TOOL_REQUEST, need)
            assert (resp.text, resp.finish_reason, resp.tool_calls) == ("", "tool_calls", (TOOL_CALL,))
            assert resp.usage.output_tokens == 5 and resp.cost is not None and resp.cost > 0
            sent = faulty.payloads_seen[-1]
            assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto"

            follow = attrs.evolve(TOOL_REQUEST, messages=[
                *TOOL_REQUEST.messages, Message.assistant(resp.text, resp.tool_calls),
                Message.tool('{"temperature": 18}', TOOL_CALL_ID)])
            await mm.complete(follow, need)
        assistant, tool = faulty.payloads_seen[-1]["messages"][-2:]
        assert assistant == {"role": "assistant", "content": None, "tool_calls": [
            {"id": TOOL_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}]}
        assert tool == {"role": "tool", "content": '{"temperature": 18}', "tool_call_id": TOOL_CALL_ID}

    async def test_stream_falls_back_before_the_first_chunk(self, squirrel_manager: Any, faulty: FaultyServer,
                                                            canary_env: str) -> None:
        async with squirrel_manager(self.config(faulty, "reset", "ok")) as mm, mm.stream(REQUEST) as s:
            text = "".join([c.text async for c in s])
        assert s.response is not None and s.response.model == "faulty/ok" and text

    async def test_hangs_end_within_the_deadline(self, squirrel_manager: Any, faulty: FaultyServer,
                                                 canary_env: str) -> None:
        cfg = self.config(faulty, "hang", max_attempts=10, timeout=1.0, provider_timeout=60)
        took = []
        # Each request timed from its own start (the manager's start-up took most of a shared
        # 2.5 s budget at load 10): it ends at its 1 s deadline, not at the upstream's 60 s.
        # Less the time the process was kept off the CPU (the faulty server's thread shares it).
        async with squirrel_manager(cfg) as mm, loop_stalls(cpu=time.process_time) as stalls:
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await mm.complete(REQUEST)
            took.append(stalls.elapsed(t0))
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                async with mm.stream(REQUEST) as s:
                    async for _ in s:
                        pass
            took.append(stalls.elapsed(t0))
        assert all(t < 2.0 for t in took), (took, stalls)
        assert faulty.requests == 2

    async def test_rate_limit_storm_honours_retry_after(self, squirrel_manager: Any, faulty: FaultyServer,
                                                        canary_env: str) -> None:
        # Each try has 5 s to reach the server and be refused (the suite's 0.5 s could pass
        # while connecting at load 20: one try fewer reached it, and 2 <= requests failed);
        # the tries and their waits are what this proves.
        cfg = self.config(faulty, "rate-limit:0.3", max_attempts=3, timeout=20.0, provider_timeout=5.0)
        t0 = time.monotonic()
        async with squirrel_manager(cfg) as mm:
            with pytest.raises((FallbackExhausted, RateLimited)) as info:
                await mm.complete(REQUEST)
        elapsed = time.monotonic() - t0
        assert 2 <= faulty.requests <= 3, (faulty.requests, info.value)
        assert elapsed >= 0.3 * (faulty.requests - 1) - 0.02  # each retry waited for Retry-After
        errors = info.value.errors if isinstance(info.value, FallbackExhausted) else [info.value]
        assert all(isinstance(e, RateLimited) and e.retry_after == 0.3 for e in errors)

    async def test_attempts_are_bounded(self, squirrel_manager: Any, faulty: FaultyServer, canary_env: str) -> None:
        async with squirrel_manager(self.config(faulty, "error:500", "error:502", "error:503", "error:504",
                                                max_attempts=3)) as mm:
            with pytest.raises(FallbackExhausted) as info:
                await mm.complete(REQUEST)
        assert faulty.requests == 3 and len(info.value.errors) == 3

    @pytest.mark.parametrize("bad", ["auth", "error:400", "error:404", "error:422", "context", "filter"])
    async def test_hopeless_errors_are_not_retried(self, squirrel_manager: Any, faulty: FaultyServer,
                                                   canary_env: str, bad: str) -> None:
        async with squirrel_manager(self.config(faulty, bad, max_attempts=3)) as mm:
            with pytest.raises(SquirrelError):
                await mm.complete(REQUEST)
        assert faulty.requests == 1

    @pytest.mark.parametrize(("status", "retried", "kind"),
                             [(401, False, AuthenticationError), (500, True, ServerError)])
    async def test_an_error_body_nested_too_deeply_keeps_its_status(self, squirrel_manager: Any, faulty: FaultyServer,
                                                                    canary_env: str, status: int, retried: bool,
                                                                    kind: type[ModelError]) -> None:
        """An error answer whose JSON no decoder reads is text: its status still decides (it
        raised RecursionError, which the plugin reported as its own bug: a 500 not retried)."""
        deep = b'{"error": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for _ in range(3):
            faulty.serve("ok", deep, status=status)
        async with squirrel_manager(self.config(faulty, "ok", max_attempts=3)) as mm:
            with pytest.raises(SquirrelError) as info:
                await mm.complete(REQUEST)
        errors = info.value.errors if isinstance(info.value, FallbackExhausted) else [info.value]
        assert [type(e) for e in errors] == [kind] * faulty.requests
        assert (faulty.requests > 1) is retried

    async def test_broken_stream_is_charged_for_what_arrived(self, squirrel_manager: Any, faulty: FaultyServer,
                                                             canary_env: str) -> None:
        cfg = self.config(faulty, "truncate", budget={"limits": [{"scope": "global", "limit": "1"}]})
        async with squirrel_manager(cfg) as mm:
            with pytest.raises(MidStreamError) as info:
                async with mm.stream(REQUEST) as s:
                    async for _ in s:
                        pass
            (usage,) = await mm.tokens.check_budget(mm.models["faulty/truncate"])
        e = info.value
        assert e.partial_text and e.usage is not None and e.usage.output_tokens > 0
        assert usage.committed > 0 and usage.reserved == 0
        assert e.usage.input_tokens > 0  # its prompt too, not only what arrived
        assert faulty.requests == 1  # never replayed

    @pytest.mark.parametrize(("bad", "charged"), [
        ("slow:3", True), ("reset", True), ("malformed-stream", True), ("error:500", False),
        ("error:429", False)])
    async def test_a_stream_cut_before_its_first_chunk_is_charged_unless_refused(
            self, squirrel_manager: Any, faulty: FaultyServer, canary_env: str, bad: str,
            charged: bool) -> None:
        """Its request left and no chunk came (a read timeout, a connection lost after the
        send, a 200 stream that cannot be read): the server may be generating, so
        ``[budget] charge_unanswered`` charges it its worst case, marked ``cut``; a refusal
        costs nothing."""
        cfg = self.config(faulty, bad, max_attempts=1, provider_timeout=0.3,
                          budget={"limits": [{"scope": "global", "limit": "1000"}]})
        async with squirrel_manager(cfg) as mm:
            with pytest.raises(ModelError):
                async with mm.stream(REQUEST) as s:
                    async for _ in s:
                        pass
            card = mm.models[f"faulty/{bad}"]
            (usage,) = await mm.tokens.check_budget(card)
            rows = await mm.budget_backend.rows()
            worst = mm.tokens.estimate(REQUEST, card).worst_case_cost
        (row,) = rows
        assert usage.reserved == 0 and usage.committed == row.cost
        if charged:
            assert (row.cost, row.usage_source, row.output_tokens) == (worst, "cut", REQUEST.max_tokens)
            assert worst > 0 and row.input_tokens > 0
        else:
            assert (row.cost, row.usage_source) == (0, "reported")

    async def test_canary_key_never_leaks(self, squirrel_manager: Any, squirrel_metrics: Any, faulty: FaultyServer,
                                          canary_env: str, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        texts: list[str] = []
        cfg = self.config(faulty, *LEAK_BEHAVIOURS, max_attempts=2, timeout=3.0, provider_timeout=0.3)
        async with squirrel_manager(cfg) as mm:
            texts.append(repr(mm.providers) + repr(list(mm.models.values())))
            for b in LEAK_BEHAVIOURS:
                req = AIRequest.from_prompt("hi", max_tokens=8)
                pin = ModelRequirements(models={f"faulty/{b}"})
                try:
                    await mm.complete(req, pin)
                except SquirrelError as exc:
                    texts += texts_of(exc)
                try:
                    async with mm.stream(req, pin) as s:
                        async for _ in s:
                            pass
                except SquirrelError as exc:
                    texts += texts_of(exc)
        assert any(h.get("authorization") == "Bearer " + self.key for h in faulty.headers_seen)  # it was sent
        assert len(texts) > 2 * len(LEAK_BEHAVIOURS)
        texts += [r.getMessage() for r in caplog.records]
        texts += [logging.Formatter().format(r) for r in caplog.records]
        texts.append(squirrel_metrics.everything())
        found = leaks(texts, self.key)
        assert not found, found[:1]
