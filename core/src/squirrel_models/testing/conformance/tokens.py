"""The conformance suite of token counters (``count_tokens`` plugins): :class:`TokenCounterConformance`."""

from __future__ import annotations

from typing import Any

import pluggy
import pytest

from ... import hookspecs
from ...cards import ModelCard
from ...errors import SquirrelError
from ...messages import Message, ToolCall
from ...request import AIRequest
from ...responses import TokenCount
from ...tokens import ceiling, upper_bound

__all__ = ["TokenCounterConformance", "sample_requests", "sample_texts"]

#: The tool the sample requests offer (an OpenAI-format definition).
_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def sample_texts(huge: int = 1 << 20) -> list[str]:
    """Texts a counter meets: empty, plain, every script and emoji sequences, control
    characters, whitespace only, one long word, and one of ``huge`` characters."""
    return ["", "hello", "Hello, world! How are you today?", "naïve café \u2013 東京 🐿️ مرحبا Привет",
            "e\u0301" * 50, "👩\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈", "\x00\t\n\r\x1b[0m", "   \n\n  ",
            "a" * 10_000, "{\"city\": \"Paris\"}", ("squirrel 松鼠 🐿️ " * (huge // 16 + 1))[:huge]]


def sample_requests() -> list[AIRequest]:
    """Prompts a counter meets: one message, a conversation with a system prompt and a tool
    call, tools offered, and unicode."""
    call = ToolCall("call_1", "get_weather", "{\"city\": \"Paris\"}")
    return [AIRequest.from_prompt("hello"),
            AIRequest.from_prompt("Say hello in one short sentence.", system="You are terse."),
            AIRequest(messages=(Message.system("Be brief."), Message.user("Weather in Paris?"),
                                Message.assistant("", tool_calls=[call]), Message.user("And in 東京 🐿️?"))),
            AIRequest.from_prompt("What is the weather in Paris?", tools=[_TOOL]),
            AIRequest.from_prompt("naïve café \u2013 " * 500)]


def _what(request: AIRequest | None, text: str | None) -> str:
    shown = request.text() if request is not None else text or ""
    return f"{'the prompt' if request is not None else 'the text'} {shown[:40]!r}" + \
        (f"... ({len(shown)} characters)" if len(shown) > 40 else "")


class TokenCounterConformance:
    """Checks a ``count_tokens`` plugin. Provide fixtures:

    - ``counter``: the plugin (a module or an object) holding the ``count_tokens`` hookimpl;
    - ``card``: a :class:`ModelCard` it counts for;
    - ``provider`` (optional, default None): the provider instance serving ``card``, if the
      counter reads it.

    Override :meth:`known_counts` with true counts (from the tokenizer itself) of some texts and
    prompts: a counter that says ``exact=True`` must match them, and is asked for them.
    """

    #: The length of the huge text the counter must count (characters).
    huge: int = 1 << 20

    @pytest.fixture
    def provider(self) -> Any:
        return None

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        """``(prompt or text, true count)`` pairs: the model's tokenizer's own counts."""
        return []

    def _pm(self, counter: object) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        try:
            pm.register(counter)
        except pluggy.PluginValidationError as exc:
            raise AssertionError(f"the count_tokens hookimpl does not match the hookspec: {exc}") from exc
        return pm

    def count(self, counter: object, card: ModelCard, provider: Any, request: AIRequest | None = None,
              text: str | None = None) -> TokenCount | None:
        """The plugin's answer, as the core asks for it; anything raised but a SquirrelError fails."""
        try:
            result: Any = self._pm(counter).hook.count_tokens(model=card, provider=provider, request=request,
                                                               text=text)
        except SquirrelError:
            raise
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"count_tokens raised {type(exc).__name__} for {_what(request, text)}: "
                                 "return None for what you cannot count") from exc
        assert result is None or isinstance(result, TokenCount), \
            f"count_tokens returned {result!r}, not a TokenCount or None, for {_what(request, text)}"
        if result is not None:
            assert isinstance(result.tokens, int) and not isinstance(result.tokens, bool) and result.tokens >= 0, \
                f"count_tokens counted {result.tokens!r} tokens (a whole number >= 0) for {_what(request, text)}"
            assert isinstance(result.exact, bool), f"TokenCount.exact is {result.exact!r}, not a bool"
        return result

    def _inputs(self) -> list[tuple[AIRequest | None, str | None]]:
        out: list[tuple[AIRequest | None, str | None]] = [(r, None) for r in sample_requests()]
        out += [(None, t) for t in sample_texts(self.huge)]
        out += [(k, None) if isinstance(k, AIRequest) else (None, k) for k, _ in self.known_counts()]
        return out

    def test_counts_its_model(self, counter: object, card: ModelCard, provider: Any) -> None:
        """The model it is for gets a count, of a prompt and of a text."""
        assert self.count(counter, card, provider, request=AIRequest.from_prompt("hello")) is not None, \
            f"no count of a prompt for {card.id}"
        assert self.count(counter, card, provider, text="hello") is not None, f"no count of a text for {card.id}"

    def test_any_text_gets_a_count_or_none(self, counter: object, card: ModelCard, provider: Any) -> None:
        """Every prompt and text (empty, unicode, control characters, huge) gets a ``TokenCount``
        of a whole number >= 0 that says whether it is exact, or None; never another exception
        than a ``SquirrelError``."""
        for request, text in self._inputs():
            self.count(counter, card, provider, request, text)

    def test_other_models_get_none(self, counter: object, card: ModelCard) -> None:
        """A model of another plugin gets None: the first answer wins, so a counter that
        answers for every model takes the place of the counter that knows it."""
        other = ModelCard.for_provider("someone-else", "model", provider_type="someone-else")
        for request, text in ((AIRequest.from_prompt("hello"), None), (None, "hello")):
            got = self.count(counter, other, object(), request, text)
            assert got is None, f"counted {got} for {other.id}, a model of another plugin: return None"

    def test_same_input_same_count(self, counter: object, card: ModelCard, provider: Any) -> None:
        """A count depends on its input only (nothing kept from an earlier count)."""
        inputs = self._inputs()
        first = [self.count(counter, card, provider, r, t) for r, t in inputs]
        again = [self.count(counter, card, provider, r, t) for r, t in reversed(inputs)][::-1]
        for (request, text), a, b in zip(inputs, first, again, strict=True):
            assert a == b, f"{_what(request, text)} counted {a} then {b}"

    def test_exact_counts_are_exact(self, counter: object, card: ModelCard, provider: Any) -> None:
        """An exact count equals the tokenizer's own (:meth:`known_counts`); an upper bound is
        not below it. A counter that says ``exact=True`` must give known counts to check."""
        known = self.known_counts()
        if not known:
            exact = [x for r, t in self._inputs()[:8] if (x := self.count(counter, card, provider, r, t)) and x.exact]
            assert not exact, ("the counter says exact=True: override known_counts() with the tokenizer's own "
                               "counts of some prompts and texts, so the suite can check them")
            pytest.skip("the counter gives upper bounds only and known_counts() gives none")
        for what, true in known:
            request, text = (what, None) if isinstance(what, AIRequest) else (None, what)
            got = self.count(counter, card, provider, request, text)
            assert got is not None, f"no count for {_what(request, text)}"
            if got.exact:
                assert got.tokens == true, f"{_what(request, text)}: counted exactly {got.tokens}, truly {true}"
            else:
                assert got.tokens >= true, f"{_what(request, text)}: upper bound {got.tokens} under-counts {true}"

    def test_exact_counts_fit_the_core_bounds(self, counter: object, card: ModelCard, provider: Any) -> None:
        """Exact counts stay within what the core assumes of every tokenizer (each token covers
        a UTF-8 byte at least: see :mod:`squirrel_models.tokens`): a text of ``n`` bytes is at
        most ``n`` tokens, no text is no token, and a prompt at most :func:`~squirrel_models.
        tokens.ceiling` of its upper bound (what lets a request skip counting)."""
        for request, text in self._inputs():
            got = self.count(counter, card, provider, request, text)
            if got is None or not got.exact:
                continue
            if request is None:
                size = len((text or "").encode("utf-8", "surrogatepass"))
                assert got.tokens <= size, f"{_what(request, text)}: {got.tokens} exact tokens in {size} bytes"
            else:
                most = ceiling(upper_bound(request).tokens, request)
                assert got.tokens <= most, f"{_what(request, text)}: {got.tokens} exact tokens, more than {most}"

    def test_upper_bounds_never_under_count(self, counter: object, card: ModelCard, provider: Any) -> None:
        """A count with ``exact=False`` is an upper bound. Of a text: not below its UTF-8 bytes
        (a tokenizer may spend a token on each). Of a prompt: not below the counter's own exact
        counts of its message texts (the tokenizer is known, the framing around them estimated),
        or, where it counts them only roughly too, their UTF-8 bytes."""
        for request, text in self._inputs():
            got = self.count(counter, card, provider, request, text)
            if got is None or got.exact:
                continue
            if request is None:
                floor = len((text or "").encode("utf-8", "surrogatepass"))
            else:
                parts = [self.count(counter, card, provider, text=m.text) for m in request.messages]
                floor = (sum(p.tokens for p in parts if p is not None) if all(p is not None and p.exact for p in parts)
                         else sum(len(m.text.encode("utf-8", "surrogatepass")) for m in request.messages))
            assert got.tokens >= floor, (
                f"{_what(request, text)}: the upper bound {got.tokens} under-counts (its texts may make {floor} "
                "tokens); say exact=True only with the model's tokenizer")
