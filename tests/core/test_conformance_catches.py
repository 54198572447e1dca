"""Each conformance suite fails a wrong implementation and passes a right one.

The HTTP kit: a provider that quotes a key it never registered in its errors, one that shields
its call from cancellation (so a request outlives its deadline), and one that never closes its
client, each run in a pytest of its own, as a plugin's test suite would. The fallback strategy
and token counter suites: one wrong implementation per rule they check, each failing with the
rule's message, and a right one passing every check. The budget suite: backends that refuse an
exact fit, commit on release, or settle on one scope only (each passed it before), and the
in-memory backend passing it.
"""

from __future__ import annotations

import inspect
import random
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from squirrel_models import AIRequest, FallbackStep, ModelCard, ModelError, TokenCount, hookimpl
from squirrel_models.builtins.fallback import NextCandidate
from squirrel_models.builtins.memory_budget import MemoryBudgetBackend
from squirrel_models.errors import BudgetExceeded
from squirrel_models.fallback import FallbackContext
from squirrel_models.testing import ScriptedPlugin
from squirrel_models.testing.conformance import (
    BudgetBackendConformance,
    FallbackStrategyConformance,
    TokenCounterConformance,
)
from squirrel_models.testing.provider import TYPE_NAME

PLUGIN_TESTS = '''
import os

import anyio
import attrs
import httpx
import pytest
from squirrel_models import AuthenticationError, ProviderSpec, SimpleProvider, Usage
from squirrel_models.simple import raise_for_status, sse_json
from squirrel_models.testing.conformance import HTTPProviderConformance

KEY = "sk-kit-canary-5e1f0a9b3c7d"


@pytest.fixture(params=["asyncio"])
def anyio_backend(request):
    return request.param


@attrs.frozen
class Options:
    base_url: str
    timeout: float
    api_key_env: str | None = "KIT_KEY"


class Right(SimpleProvider):
    default_models = ("ok",)
    supports = frozenset({"max_tokens", "stop"})

    def __init__(self, spec):
        super().__init__(spec)
        key = self.secret("api_key_env")
        self.client = httpx.AsyncClient(base_url=self.options.base_url, timeout=self.options.timeout,
                                        headers={"Authorization": f"Bearer {key.reveal()}"} if key else {})

    async def generate(self, model, request):
        body = {"model": model.model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": m.role, "content": m.text} for m in request.messages],
                "max_tokens": request.max_tokens, "stop": list(request.stop) or None}
        async with self.client.stream("POST", "/chat/completions", json=body) as response:
            await raise_for_status(response)
            async for event in sse_json(response):
                for choice in event.get("choices") or []:
                    yield choice["delta"].get("content") or ""
                if usage := event.get("usage"):
                    yield Usage(usage["prompt_tokens"], usage["completion_tokens"])

    async def aclose(self):
        await self.client.aclose()


class LeaksKey(Right):
    """Reads the key itself (never registered for redaction) and quotes it."""

    def __init__(self, spec):
        super().__init__(attrs.evolve(spec, options=attrs.evolve(spec.options, api_key_env=None)))
        self.key = os.environ["KIT_KEY"]
        self.client.headers["Authorization"] = f"Bearer {self.key}"

    def translate(self, exc):
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
            return AuthenticationError(f"the key {self.key} was refused")
        return super().translate(exc)


class IgnoresDeadline(Right):
    """Shields its upstream call: a cancelled request waits for the provider's own timeout."""

    async def generate(self, model, request):
        with anyio.CancelScope(shield=True):
            items = [x async for x in super().generate(model, request)]
        for x in items:
            yield x


class NeverReleases(Right):
    """Asks for whole answers (a keep-alive connection each) and never closes its client."""

    async def generate(self, model, request):
        body = {"model": model.model, "messages": [{"role": m.role, "content": m.text} for m in request.messages],
                "max_tokens": request.max_tokens, "stop": list(request.stop) or None}
        response = await self.client.post("/chat/completions", json=body)
        response.raise_for_status()
        answer = response.json()
        yield answer["choices"][0]["message"]["content"]
        yield Usage(answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"])

    async def aclose(self):
        pass


def kit(cls):
    class Kit(HTTPProviderConformance):
        @pytest.fixture
        def secrets(self):
            return [KEY]

        @pytest.fixture
        async def provider(self, fake_server, monkeypatch):
            monkeypatch.setenv("KIT_KEY", KEY)
            p = cls(ProviderSpec("kit", "kit", Options(fake_server.base_url, self.timeout)))
            yield p
            await p.aclose()

    return Kit


TestRight = kit(Right)
TestLeaksKey = kit(LeaksKey)
TestIgnoresDeadline = kit(IgnoresDeadline)
TestNeverReleases = kit(NeverReleases)
'''

CHECKS = "test_no_secret_in_errors or test_cancelled_call_ends_at_once or test_aclose_closes_every_connection"


def test_the_kit_fails_each_wrong_provider_and_passes_the_right_one(tmp_path: Path) -> None:
    (tmp_path / "test_plugin.py").write_text(PLUGIN_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-k", CHECKS,
                           str(tmp_path / "test_plugin.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = done.stdout
    outcome = {m.group(2): m.group(1) for m in re.finditer(r"^(PASSED|FAILED|ERROR|SKIPPED) [^:\s]+::(\S+)", out, re.M)}
    by_class: dict[str, dict[str, set[str]]] = {}
    for test, result in outcome.items():
        cls, _, name = test.partition("::")
        by_class.setdefault(cls, {}).setdefault(result, set()).add(name.split("[")[0])
    assert set(by_class.get("TestRight", {})) == {"PASSED"}, out[-4000:]
    assert "test_no_secret_in_errors" in by_class["TestLeaksKey"].get("FAILED", set()), out[-4000:]
    assert "test_cancelled_call_ends_at_once" in by_class["TestIgnoresDeadline"].get("FAILED", set()), out[-4000:]
    assert by_class["TestNeverReleases"].get("FAILED") == {"test_aclose_closes_every_connection"}, out[-4000:]
    assert "the error shows the key (sk-***)" in out and "a cancellation must end it at once" in out
    assert "still open after aclose()" in out


# --- the in-process suites: every check, as pytest would call it, each failure's message ----


async def failures(suite: object, until: str | None = None, **fixtures: Any) -> list[str]:
    """The messages of the suite's checks that fail with ``fixtures`` (skips pass), up to the
    first that says ``until``."""
    out = []
    for name in sorted(dir(suite)):
        if not name.startswith("test_"):
            continue
        check = getattr(suite, name)
        try:
            result = check(**{k: v for k, v in fixtures.items() if k in inspect.signature(check).parameters})
            if inspect.isawaitable(result):
                await result
        except AssertionError as exc:
            out.append(f"{name}: {exc}")
            if until is not None and until in str(exc):
                break
        except pytest.skip.Exception:
            pass
    return out


class NextUntried:
    """A right strategy to start from: a model error moves to the next untried candidate."""

    name = "wrong"

    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        return isinstance(error, ModelError)

    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        untried = ctx.untried()
        return FallbackStep(untried[0]) if untried else None


class SyncStep(NextUntried):
    def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:  # type: ignore[override]
        untried = ctx.untried()
        return FallbackStep(untried[0]) if untried else None


class RaisesOnOthers(NextUntried):
    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        return error.retry_after is not None  # type: ignore[attr-defined]  # not every error has it


class NotABool(NextUntried):
    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        return getattr(error, "status_code", None)  # type: ignore[return-value]


class CountsInCanHandle(NextUntried):
    def can_handle(self, error: BaseException, ctx: FallbackContext) -> bool:
        ctx.tries[ctx.current.id] = ctx.tries.get(ctx.current.id, 0) + 1
        return isinstance(error, ModelError)


class NegativeDelay(NextUntried):
    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        return FallbackStep(ctx.current, -1.0)


class FollowsEveryEdge(NextUntried):
    """Follows the graph without asking ``ctx.reachable``: past ``allowed_models``."""

    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        for mid in ctx.graph.get(ctx.current.id, ()):
            if mid not in ctx.tries:
                provider, _, model = mid.partition("/")
                return FallbackStep(ModelCard.for_provider(provider, model))
        return None


class IgnoresBreakers(NextUntried):
    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        untried = [c for c in ctx.candidates if c.id not in ctx.tries]
        return FallbackStep(untried[-1]) if untried else None


class BestAgain(NextUntried):
    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        return FallbackStep(ctx.candidates[0])


class WaitsAsAsked(NextUntried):
    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        return FallbackStep(ctx.current, 1.0)


class SleepsItself(NextUntried):
    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        if ctx.remaining() < 1:
            await anyio.sleep(2.5)  # waits the backoff here instead of returning it
        return await super().try_fallback(error, ctx)


class RetriesForever(NextUntried):
    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        return FallbackStep(ctx.current, 0.0, "again")


class PicksAtRandom(NextUntried):
    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        untried = ctx.untried()
        return FallbackStep(random.choice(untried)) if untried else None


WRONG_STRATEGIES = {
    "a synchronous try_fallback": (SyncStep(), "must be async"),
    "can_handle raising for other errors": (RaisesOnOthers(), "can_handle raised AttributeError"),
    "can_handle answering no bool": (NotABool(), "not a bool"),
    "can_handle counting tries": (CountsInCanHandle(), "can_handle changed the context"),
    "a negative delay": (NegativeDelay(), "a finite number of seconds >= 0"),
    "an edge past allowed_models": (FollowsEveryEdge(), "outside the candidates and what ctx.reachable gives"),
    "a step to an open breaker": (IgnoresBreakers(), "whose breaker is open"),
    "back to a failed model": (BestAgain(), "which failed already"),
    "a wait past the deadline": (WaitsAsAsked(), "past the deadline"),
    "sleeping in try_fallback": (SleepsItself(), "try_fallback waited past the deadline"),
    "endless retries": (RetriesForever(), "bound the retries"),
    "a random choice": (PicksAtRandom(), "twice differently"),
}


class AnswersLate(NextUntried):
    """Right, on a loaded machine: it waits less than the time left when asked, and its answer
    comes after a pause (blocking, as a busy CPU would) that leaves less than that wait."""

    async def try_fallback(self, error: BaseException, ctx: FallbackContext) -> FallbackStep | None:
        step = await super().try_fallback(error, ctx)
        left = ctx.remaining()
        if step is None or not 0 < left <= 0.5:
            return step
        time.sleep(0.7 * left)
        return FallbackStep(step.model, 0.5 * left)


@pytest.mark.anyio
async def test_the_fallback_suite_passes_right_strategies() -> None:
    """AnswersLate failed 'past the deadline' (the time left read after it answered): the
    suite's own flake at load 5, on the built-in retry strategy."""
    for right in (NextUntried(), NextCandidate(), AnswersLate()):
        assert await failures(FallbackStrategyConformance(), strategy=right) == []


@pytest.mark.anyio
@pytest.mark.parametrize("wrong", list(WRONG_STRATEGIES))
async def test_the_fallback_suite_fails_each_wrong_strategy(wrong: str) -> None:
    strategy, says = WRONG_STRATEGIES[wrong]
    found = await failures(FallbackStrategyConformance(), says, strategy=strategy)
    assert any(says in f for f in found), found


class Words(TokenCounterConformance):
    """The suite with the true counts of the scripted provider's word tokenizer."""

    huge = 1 << 16

    def known_counts(self) -> list[tuple[AIRequest | str, int]]:
        return [("one two three", 3), ("", 0), (AIRequest.from_prompt("one two"), 4)]


class WordCounter:
    """A right counter: the scripted models' words (and two per message)."""

    def words(self, request: AIRequest | None, text: str | None) -> int:
        if request is not None:
            return sum(len(m.text.split()) + 2 for m in request.messages)
        return len((text or "").split())

    @hookimpl
    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> TokenCount | None:
        if model.provider_type != TYPE_NAME:
            return None
        return self.answer(request, text)

    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        return TokenCount(self.words(request, text), exact=True)


class OffSpec:
    @hookimpl
    def count_tokens(self, model: ModelCard, prompt: str) -> TokenCount | None:
        return None


class AsciiOnly(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        (request.text() if request is not None else text or "").encode("ascii")
        return super().answer(request, text)


class PlainInt(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        return self.words(request, text)


class NegativeForNothing(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        return TokenCount(self.words(request, text) or -1, exact=True)


class ExactAsText(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        return TokenCount(self.words(request, text), exact="yes")  # type: ignore[arg-type]


class Silent(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        return None


class EveryModel(WordCounter):
    @hookimpl
    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> TokenCount | None:
        return self.answer(request, text)


class Drifting(WordCounter):
    calls = 0

    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        self.calls += 1
        return TokenCount(self.words(request, text) + self.calls % 2, exact=False)


class OffByOne(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        return TokenCount(self.words(request, text) + 1, exact=True)


class TwoPerCharacter(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        if request is None:
            return TokenCount(2 * len(text or ""), exact=True)
        return super().answer(request, text)


class QuarterOfCharacters(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        shown = request.text() if request is not None else text or ""
        return TokenCount(len(shown) // 4 + 4, exact=False)


class RoughPrompts(WordCounter):
    def answer(self, request: AIRequest | None, text: str | None) -> Any:
        return TokenCount(1, exact=False) if request is not None else super().answer(request, text)


WRONG_COUNTERS: dict[str, tuple[object, type[TokenCounterConformance], str]] = {
    "a hookimpl off the spec": (OffSpec(), Words, "does not match the hookspec"),
    "raising on unicode": (AsciiOnly(), Words, "count_tokens raised UnicodeEncodeError"),
    "an int, not a TokenCount": (PlainInt(), Words, "not a TokenCount or None"),
    "a negative count": (NegativeForNothing(), Words, "a whole number >= 0"),
    "exact not a bool": (ExactAsText(), Words, "not a bool"),
    "no count for its model": (Silent(), Words, "no count of a prompt"),
    "counting every model": (EveryModel(), Words, "a model of another plugin"),
    "a count that drifts": (Drifting(), Words, "then"),
    "an exact count that is wrong": (OffByOne(), Words, "counted exactly"),
    "exact, with nothing to check it by": (WordCounter(), TokenCounterConformance, "override known_counts()"),
    "more exact tokens than bytes": (TwoPerCharacter(), Words, "exact tokens in"),
    "an upper bound that under-counts": (QuarterOfCharacters(), Words, "under-counts"),
    "a prompt bound below its own text counts": (RoughPrompts(), Words, "its texts may make"),
}
CARD = ModelCard.for_provider("s", "m", provider_type=TYPE_NAME)


@pytest.mark.anyio
async def test_the_token_counter_suite_passes_right_counters() -> None:
    for right in (WordCounter(), ScriptedPlugin()):
        assert await failures(Words(), counter=right, card=CARD, provider=None) == []


@pytest.mark.anyio
@pytest.mark.parametrize("wrong", list(WRONG_COUNTERS))
async def test_the_token_counter_suite_fails_each_wrong_counter(wrong: str) -> None:
    counter, suite, says = WRONG_COUNTERS[wrong]
    found = await failures(suite(), says, counter=counter, card=CARD, provider=None)
    assert any(says in f for f in found), found


# --- budget backends ---------------------------------------------------------------------------


class ReleaseCommits(MemoryBudgetBackend):
    """release() charges the reservation as if it were spent (and keeps no ledger)."""

    settles_with_ledger = False

    async def release(self, reservation: Any) -> None:
        if reservation.id in self._open:
            await MemoryBudgetBackend.settle(self, reservation, reservation.amount)
        await super().release(reservation)


class RefusesAnExactFit(MemoryBudgetBackend):
    """Refuses a reservation that would fill the limit exactly (``>=`` for ``>``)."""

    async def reserve(self, charges: Any, amount: Decimal, *, ttl: float, request_id: str = "") -> Any:
        for c in charges:
            used = (await self.usage([c]))[0]
            if amount and used.committed + used.reserved + amount >= c.limit:
                raise BudgetExceeded(scope=c.scope, period=c.bucket, limit=c.limit, committed=used.committed,
                                     reserved=used.reserved, requested=amount)
        return await super().reserve(charges, amount, ttl=ttl, request_id=request_id)


class CommitsOnOneScope(MemoryBudgetBackend):
    """settle() commits on the reservation's first scope only: a key's spend never counted."""

    async def settle(self, reservation: Any, amount: Decimal, *, ledger: Any = None) -> Decimal:
        first = attrs.evolve(reservation, charges=reservation.charges[:1])
        over = await super().settle(first, amount, ledger=ledger)
        self._reserved.update({(c.scope, c.bucket): Decimal(0) for c in reservation.charges[1:]})
        return over


WRONG_BACKENDS = {
    "release commits": (ReleaseCommits, "release must free the reservation and commit nothing"),
    "an exact fit refused": (RefusesAnExactFit, "fills the limit exactly"),
    "settle on one scope": (CommitsOnOneScope, "commit the amount on every scope"),
}


async def budget_failures(make: Any, until: str | None = None) -> list[str]:
    """:func:`failures` of the budget suite, each check given a fresh backend from ``make``."""
    suite, out = BudgetBackendConformance(), []
    for name in sorted(n for n in dir(suite) if n.startswith("test_")):
        out += await failures(type("One", (), {name: staticmethod(getattr(suite, name))})(), until,
                              backend=make(), sliced=None)  # no slices: those checks skip
        if until is not None and any(until in f for f in out):
            break
    return out


@pytest.mark.anyio
async def test_the_budget_suite_passes_the_memory_backend() -> None:
    assert await budget_failures(MemoryBudgetBackend) == []


@pytest.mark.anyio
@pytest.mark.parametrize("wrong", list(WRONG_BACKENDS))
async def test_the_budget_suite_fails_each_wrong_backend(wrong: str) -> None:
    """Each passed the whole suite before its rule was added (release commits: with a ledger,
    only the ledger check saw it)."""
    make, says = WRONG_BACKENDS[wrong]
    found = await budget_failures(make, says)
    assert any(says in f for f in found), found
