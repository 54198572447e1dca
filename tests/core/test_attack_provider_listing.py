"""What a third-party provider plugin says about its models and tokens, junk as hypothesis
draws it: ``list_models`` returning no list, cards of the wrong types (an id that is not
``<provider>/<model>``, a name with a line break, a negative or huge context window or output
limit, a price that is no ``Price``, a NaN latency, duplicate names), a ``Price`` the plugin
cannot build (Decimal NaN), ``live_stats`` that raise or are junk, and a ``count_tokens``
hook returning no count (negative, None-like, float, bool, huge, fewer tokens than the text
surely holds). At start (reload lists through the same check) and on every request: a ``SquirrelError`` naming the
provider or plugin, or the junk left out with a logged reason naming it (strict mode: a
``PluginError``), and nothing stays reserved.

Before: ``list_models`` returning None or a dict, or a card whose id was an int, ended
``start()`` with a raw ``TypeError``/``AttributeError``; a card whose price was no ``Price``
or whose latency was a string passed start-up and broke every request with a raw
``AttributeError``/``TypeError``; negative, fractional and huge output limits and windows,
empty or multi-line names and ids not ``<provider>/<model>`` were routed to; a NaN price was a
bare ``InvalidRequest`` not naming the provider; ``live_stats`` junk broke ranking with a raw
exception; a count hook returning a str or an int broke the request with ``AttributeError``,
and a huge count left a stream's reservation open."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import (
    AIRequest,
    ConfigError,
    ModelCard,
    ModelManager,
    PluginError,
    Price,
    ProviderResponse,
    ProviderType,
    SquirrelError,
    StreamChunk,
    TokenCount,
    Usage,
    hookimpl,
)
from squirrel_models.plugincheck import card_problem
from squirrel_models.plugins import PluginManager

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])
PRICE = Price(1, 2)
JUNK = [None, -1, 0, 2.5, float("nan"), True, "5", 10**30, Decimal("NaN"), object()]


def _card(**kw: Any) -> ModelCard:
    fields = {"id": "bad/m", "provider": "bad", "model": "m", "price": PRICE,
              "features": {"streaming"}} | kw
    return ModelCard(**fields)


def _build(kw: dict[str, Any]) -> Any:
    try:
        return _card(**kw)
    except SquirrelError:  # the card's own checks refused it: the plugin would raise that
        return Raises()


class Raises:
    """list_models raises building a card (what ModelCard or Price refused)."""


CARD_FIELDS = st.one_of(
    st.just({}),
    st.builds(lambda v: {"id": v}, st.sampled_from([5, None, "bad/x", "other/m", "bad/m\n"])),
    st.builds(lambda v: {"model": v, "id": f"bad/{v}"}, st.sampled_from(["", " ", "m\nx", "m\x00"])),
    st.builds(lambda v: {"model": v}, st.sampled_from([5, None])),
    st.builds(lambda v: {"provider": v}, st.sampled_from(["other", 5])),
    st.builds(lambda v: {"context_window": v}, st.sampled_from(JUNK)),
    st.builds(lambda v: {"max_output_tokens": v}, st.sampled_from(JUNK)),
    st.builds(lambda v: {"price": v}, st.sampled_from([5, {"input": 1}, Decimal(1), "1", None])),
    st.builds(lambda v: {"latency_ms": v}, st.sampled_from(JUNK)),
    st.builds(lambda v: {"quality": v}, st.sampled_from(JUNK)),
    st.builds(lambda v: {"metadata": v}, st.sampled_from([5, None, "x"])),
    st.builds(lambda v: {"model": v, "id": f"bad/{v}"}, st.sampled_from(["m", "m2"])),  # duplicates
)
LISTINGS = st.one_of(st.lists(CARD_FIELDS.map(_build), max_size=4),
                     st.sampled_from([None, "abc", {"bad/m": 1}, 5]))
COUNTS = st.sampled_from([TokenCount(-5, True), TokenCount(2.5, True), TokenCount(True, True),  # type: ignore[arg-type]
                          TokenCount(10**30, True), TokenCount(0, True), TokenCount(3, "yes"),  # type: ignore[arg-type]
                          TokenCount(float("nan"), False), "x", 5, [], TokenCount(4, True), None])  # type: ignore[arg-type]
LIVE = st.sampled_from([None, {}, {"queue_depth": 1.0}, "x", 5, {"queue_depth": -1}, {"queue_depth": "x"},
                        {"queue_depth": float("nan")}, {"tokens_per_s": "fast"}, RuntimeError("live")])


class Listed:
    """A provider whose listing, live statistics and token counts are drawn; its answers
    are fine."""

    def __init__(self, name: str, listing: Any, live: Any) -> None:
        self.name, self.listing, self.live = name, listing, live

    async def list_models(self) -> Any:
        if isinstance(self.listing, list) and any(isinstance(c, Raises) for c in self.listing):
            Price(Decimal("NaN"), 1)  # raises InvalidRequest, as a card built of junk does
        return self.listing

    def live_stats(self, model: ModelCard) -> Any:
        if isinstance(self.live, BaseException):
            raise self.live
        return self.live

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        return ProviderResponse("fine answer", Usage(5, 2))

    async def stream(self, model: ModelCard, request: AIRequest) -> Any:
        yield StreamChunk("fine ")
        yield StreamChunk("answer", usage=Usage(5, 2))

    async def aclose(self) -> None:
        pass


def _plugins(listing: Any, live: Any, count: Any) -> PluginManager:
    class ThirdParty:
        @hookimpl
        def register_providers(self) -> list[ProviderType]:
            return [ProviderType("listed", lambda spec: Listed(spec.name, listing, live))]

    class Counter:
        @hookimpl
        def count_tokens(self, model: ModelCard, request: Any, text: Any) -> Any:
            return count

    pm = PluginManager(load_entry_points=False)
    pm.register(ThirdParty(), "third-party")
    pm.register(Counter(), "counter")
    return pm


def _config(strict: bool) -> dict[str, Any]:
    return {"providers": [{"name": "bad", "type": "listed"}], "strict_plugins": strict,
            "budget": {"limits": [{"scope": "global", "period": "day", "limit": "5"}]}}


def _named(exc: BaseException) -> bool:
    text = str(exc)
    return "provider bad" in text or "providers[0]" in text or "'counter'" in text


async def _run(listing: Any, live: Any, count: Any, strict: bool, stream: bool) -> None:
    mm = ModelManager(_config(strict), plugins=_plugins(listing, live, count))
    refused: SquirrelError | None = None
    try:
        await mm.start()
    except SquirrelError as exc:  # the whole listing unusable (or strict): names the provider
        refused = exc
    if refused is not None:
        assert isinstance(refused, PluginError | ConfigError) and _named(refused), refused
        return
    try:
        for card in mm.selector.models.values():
            assert card_problem(card, "bad") is None, card  # what is kept can be routed to
        request = AIRequest.from_prompt("hi there, how are you", max_tokens=20)
        failed: SquirrelError | None = None
        try:
            if stream:
                async with mm.stream(request) as s:
                    async for _ in s:
                        pass
            else:
                await mm.complete(request)
        except SquirrelError as exc:
            failed = exc
        assert not isinstance(failed, PluginError) or _named(failed), failed
        assert mm.budget_backend.open_reservations == 0
        for name, why in mm.plugins.failures:
            assert name in ("provider bad", "counter"), (name, why)
    finally:
        await mm.aclose()


@BACKENDS
@SETTINGS
@given(listing=LISTINGS, live=LIVE, count=COUNTS, strict=st.booleans(), stream=st.booleans())
def test_junk_listings_live_stats_and_counts_keep_the_promises(
        backend: str, listing: Any, live: Any, count: Any, strict: bool, stream: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "squirrel_models")
    anyio.run(lambda: _run(listing, live, count, strict, stream), backend=backend)


# --- examples that failed before ---------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("listing", [None, {"bad/m": 1}, [_card(id=5)]], ids=["None", "dict", "int-id"])
async def test_a_listing_that_is_no_list_of_cards_names_the_provider(listing: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    mm = ModelManager(_config(False), plugins=_plugins(listing, None, None))
    refused: PluginError | None = None
    try:
        await mm.start()
    except PluginError as exc:
        refused = exc
    finally:
        await mm.aclose()
    if refused is not None:
        assert "provider bad" in str(refused)
    else:
        assert mm.selector.models == {} and "provider 'bad' lists a model whose id is 5" in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("kw", [{"price": 5}, {"latency_ms": "x"}, {"max_output_tokens": -5},
                                {"context_window": 10**30}, {"model": "m\nx", "id": "bad/m\nx"},
                                {"id": "bad/x"}], ids=str)
async def test_a_junk_card_is_left_out_naming_the_provider(kw: dict[str, Any],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async with ModelManager(_config(False), plugins=_plugins([_card(**kw)], None, None)) as mm:
        assert mm.selector.models == {}
    assert "provider 'bad' lists" in caplog.text and "left out" in caplog.text
    with pytest.raises(PluginError, match="provider bad"):
        async with ModelManager(_config(True), plugins=_plugins([_card(**kw)], None, None)):
            pass


@pytest.mark.anyio
async def test_a_price_the_plugin_cannot_build_names_the_provider() -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\]: listing its models at start-up failed"):
        async with ModelManager(_config(False), plugins=_plugins([Raises()], None, None)):
            pass


@pytest.mark.anyio
@pytest.mark.parametrize("count", ["x", 5, TokenCount(10**30, True), TokenCount(-5, True)], ids=str)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_junk_count_is_the_hooks_failure(count: Any, stream: bool) -> None:
    async with ModelManager(_config(False), plugins=_plugins([_card()], None, count)) as mm:
        request = AIRequest.from_prompt("hi there", max_tokens=20)
        if stream:
            async with mm.stream(request) as s:
                text = "".join([c.text async for c in s])
        else:
            text = (await mm.complete(request)).text
        assert text == "fine answer" and mm.budget_backend.open_reservations == 0
        assert {name for name, _ in mm.plugins.failures} == {"counter"}


@pytest.mark.anyio
@pytest.mark.parametrize("live", ["x", {"queue_depth": "x"}, RuntimeError("live")], ids=str)
async def test_junk_live_stats_are_none(live: Any) -> None:
    async with ModelManager(_config(False), plugins=_plugins([_card(), _card(id="bad/n", model="n")],
                                                             live, None)) as mm:
        resp = await mm.complete(AIRequest.from_prompt("hi there", max_tokens=20))
        assert resp.text == "fine answer"
        assert {name for name, _ in mm.plugins.failures} == {"provider bad"}
