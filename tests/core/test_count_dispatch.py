"""The ``count_tokens`` hook as ``PluginManager.token_counter`` calls it: the first non-None
count of the implementations in the facade's order (tryfirst, load order, trylast), each
given the arguments it names by position as pluggy gives them, failures isolated, junk
counts refused. The counter calls the implementations itself from a plan kept per set of
implementations (it runs for every budgeted or rate-limited request); these tests hold it to
what the generic hook call does."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, Message, ModelCard, PluginError, TokenCount, hookimpl
from squirrel_models.plugins import PluginManager, least

CARD = ModelCard.for_provider("p", "m")
REQUEST = AIRequest(messages=[Message("system", "be brief"), Message("user", "x" * 1000)])
PROVIDER = object()


def _plugin(answer: Any, seen: list[Any] | None = None, order: str = "") -> Any:
    """A plugin whose count_tokens answers ``answer`` (an exception: raised)."""

    def count_tokens(model: ModelCard, provider: Any, request: AIRequest | None,
                     text: str | None) -> Any:
        if seen is not None:
            seen.append((model, provider, request, text))
        if isinstance(answer, BaseException):
            raise answer
        return answer

    kw = {"tryfirst": True} if order == "first" else {"trylast": True} if order == "last" else {}

    class Plugin:
        pass

    Plugin.count_tokens = staticmethod(hookimpl(**kw)(count_tokens))  # type: ignore[attr-defined]
    return Plugin()


def _counter(pm: PluginManager) -> Any:
    return pm.token_counter(lambda card: PROVIDER)


def _generic(pm: PluginManager, request: AIRequest | None, text: str | None) -> Any:
    """The first answer of the implementations in the facade's own order (``_each``)."""
    for _, result in pm._each("count_tokens", model=CARD, provider=PROVIDER, request=request,
                              text=text):
        if result is not None:
            return result
    return None


@settings(max_examples=60, deadline=None)
@given(answers=st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 50)),
                                  st.sampled_from(["", "first", "last"])), max_size=5),
       text=st.booleans())
def test_the_first_count_in_the_facades_order_wins(answers: list[tuple[int | None, str]],
                                                   text: bool) -> None:
    pm = PluginManager(load_entry_points=False)
    for i, (n, order) in enumerate(answers):
        answer = None if n is None else TokenCount(n + 10 * i + 300, exact=True, method=f"p{i}")
        pm.register(_plugin(answer, order=order), f"p{i}")
    args = (None, "word " * 40) if text else (REQUEST, None)
    assert _counter(pm)(CARD, *args) == _generic(pm, *args)


def test_each_implementation_gets_the_arguments_it_names_in_its_order() -> None:
    seen: list[tuple[Any, ...]] = []

    class Picky:
        @hookimpl
        def count_tokens(self, text: str | None, model: ModelCard) -> None:
            seen.append((text, model))

    class Only:
        @hookimpl
        def count_tokens(self, request: AIRequest | None) -> None:
            seen.append((request,))

    class All:
        @hookimpl
        def count_tokens(self, model: ModelCard, provider: Any, request: AIRequest | None,
                         text: str | None) -> TokenCount:
            seen.append((model, provider, request, text))
            return TokenCount(400, exact=True, method="all")

    pm = PluginManager(load_entry_points=False)
    for name, plugin in (("picky", Picky()), ("only", Only()), ("all", All())):
        pm.register(plugin, name)
    count = _counter(pm)(CARD, REQUEST, None)
    assert count == TokenCount(400, exact=True, method="all")
    assert seen == [(None, CARD), (REQUEST,), (CARD, PROVIDER, REQUEST, None)]


def test_a_plugin_registered_or_removed_after_the_counter_was_made_counts_or_not() -> None:
    pm = PluginManager(load_entry_points=False)
    count = _counter(pm)
    assert count(CARD, REQUEST, None) is None
    pm.register(_plugin(TokenCount(500, exact=True, method="late")), "late")
    assert count(CARD, REQUEST, None) == TokenCount(500, exact=True, method="late")
    pm.register(_plugin(TokenCount(600, exact=True, method="first"), order="first"), "first")
    assert count(CARD, REQUEST, None).method == "first"
    pm.unregister("first")
    assert count(CARD, REQUEST, None).method == "late"
    pm.unregister("late")
    assert count(CARD, REQUEST, None) is None


def test_a_failing_hook_is_logged_and_the_next_one_counts(caplog: pytest.LogCaptureFixture) -> None:
    pm = PluginManager(load_entry_points=False)
    pm.register(_plugin(RuntimeError("tokenizer exploded")), "broken")
    pm.register(_plugin(SystemExit(3)), "exits")
    pm.register(_plugin(TokenCount(300, exact=True, method="good")), "good")
    with caplog.at_level(logging.ERROR, logger="squirrel_models.plugins"):
        assert _counter(pm)(CARD, REQUEST, None).method == "good"
    assert "hook count_tokens raised RuntimeError: tokenizer exploded" in caplog.text
    assert "hook count_tokens raised SystemExit" in caplog.text
    strict = PluginManager(strict=True, load_entry_points=False)
    strict.register(_plugin(RuntimeError("tokenizer exploded")), "broken")
    with pytest.raises(PluginError, match="tokenizer exploded"):
        _counter(strict)(CARD, REQUEST, None)


@pytest.mark.parametrize("request_", [
    REQUEST,  # plain ASCII: the bound from the bytes measured at validation
    AIRequest(messages=[Message("user", "é" * 700)]),  # not: measured here
    AIRequest(messages=[Message("user", "x" * 700, name="bob")]),
])
def test_a_count_below_what_any_tokenizer_makes_is_refused(request_: AIRequest,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    floor = least(request_, None)
    assert floor > 1
    pm = PluginManager(load_entry_points=False)
    pm.register(_plugin(TokenCount(floor - 1, exact=True, method="low")), "low")
    pm.register(_plugin(TokenCount(floor, exact=True, method="fair")), "fair")
    assert _counter(pm)(CARD, request_, None).method == "fair"
    assert "hook count_tokens" in caplog.text and "low" in caplog.text


def test_the_trace_names_each_plugin_asked(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SQUIRREL_TRACE_PLUGINS", "1")
    pm = PluginManager(load_entry_points=False)
    pm.register(_plugin(None), "quiet")
    pm.register(_plugin(TokenCount(300, exact=True, method="x")), "counts")
    with caplog.at_level(logging.DEBUG, logger="squirrel_models.plugins"):
        _counter(pm)(CARD, REQUEST, None)
    assert "hook count_tokens -> plugin quiet" in caplog.text
    assert "hook count_tokens -> plugin counts" in caplog.text
