"""Tokens, cost and budgets for one attempt: count, estimate the worst case, reserve, settle.

Counts come from the ``count_tokens`` hook (a plugin with the model's tokenizer, exact) or,
when no plugin knows the model, from an upper bound: every token of a byte-level or
byte-fallback tokenizer covers at least one UTF-8 byte, so bytes plus a per-message allowance
for the chat template bound the true count. Upper bounds are marked ``exact=False``.

An :class:`Estimate` is the worst case of one attempt *by construction*: its ``max_output``
is the output cap the manager sends upstream (``max_tokens``), its prompt never exceeds the
context window, and :meth:`TokenManager.bounded` caps every usage the library estimates
itself (a partial stream counted from its text) by it. Only usage a provider *reports* can
exceed it: the settlement then commits it in full and logs and counts the overspend.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import cast

import anyio
import attrs

from .budget import (
    CLEANUP_GRACE,
    CLEANUP_TIMEOUT,
    BudgetBackend,
    BudgetLimit,
    Charge,
    LedgerRow,
    Reservation,
    ScopeUsage,
    SettlesWithLedger,
    charges_for,
    cleanup_bound,
)
from .errors import BudgetExceeded, BudgetStoreError, CostCeilingExceeded, UnpricedModel
from .metrics import Metrics
from .types import IMAGE_TOKENS, AIRequest, Message, ModelCard, TokenCount, ToolCall, Usage

__all__ = ["DEFAULT_OUTPUT_CAP", "MAX_TOKEN_BYTES", "BudgetStoreFailed", "Estimate", "TokenManager",
           "lower_bound", "prompt_bounds", "upper_bound"]

log = logging.getLogger("squirrel_models.budget")

#: Allowance per message for role markers and template tokens in the upper bound.
PER_MESSAGE = 8
PER_REQUEST = 16
#: The output cap of a request without ``max_tokens`` on a model whose card gives no
#: ``max_output_tokens``, when the configuration sets no ``default_max_tokens``.
DEFAULT_OUTPUT_CAP = 4096


class BudgetStoreFailed(BudgetStoreError):
    """A settlement the budget backend could not take (it raised something other than a
    :class:`SquirrelError`, such as a ValueError for an amount it cannot store); the
    reservation was settled at its reserved amount, or else released: never left open."""

    def __init__(self, message: str) -> None:
        super().__init__(message, operation="settle")

Counter = Callable[[ModelCard, "AIRequest | None", "str | None"], "TokenCount | None"]


#: Entries in a TokenManager's cache of charges (cleared when full).
_CHARGES_CACHED = 4096


def _same_buckets(now: datetime) -> tuple[datetime, datetime]:
    """The UTC day around ``now``: every period's bucket is the same throughout it."""
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def _valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (most texts: returned as they are)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _calls_bytes(calls: Sequence[ToolCall]) -> int:
    """An assistant message's tool calls: their text and an allowance for their framing."""
    return sum(len(c.id.encode("utf-8", "surrogatepass")) + len(c.name.encode("utf-8", "surrogatepass"))
               + len(c.arguments.encode("utf-8", "surrogatepass")) + PER_MESSAGE for c in calls)


def _content_bound(m: Message) -> int:
    """A message's text in bytes, plus :data:`~squirrel_models.types.IMAGE_TOKENS` an image."""
    c = m.content
    if type(c) is str:
        return len(c.encode())
    return len(m.text.encode()) + IMAGE_TOKENS * len(m.images) + PER_MESSAGE * len(c)


def _label_bytes(m: Message) -> int:
    """A message's ``name`` and ``tool_call_id`` in bytes: sent with it, and counted as prompt
    by the providers that read them (OpenAI bills a name's tokens)."""
    n = 0 if m.name is None else len(m.name.encode("utf-8", "surrogatepass"))
    if m.tool_call_id is not None:
        n += len(m.tool_call_id.encode("utf-8", "surrogatepass"))
    return n


def upper_bound(request: AIRequest | None = None, text: str | None = None) -> TokenCount:
    """A count no byte-level tokenizer exceeds (see the module docstring); an image counts
    :data:`~squirrel_models.types.IMAGE_TOKENS` (providers price images by their own rules)."""
    if request is not None:
        n = PER_REQUEST + sum(_content_bound(m) + PER_MESSAGE
                              + (_calls_bytes(m.tool_calls) if m.tool_calls else 0)
                              + _label_bytes(m)
                              for m in request.messages)
        n += sum(len(repr(t).encode()) for t in request.tools)
        if request.tool_choice is not None:
            n += len(repr(request.tool_choice).encode())
        rf = request.response_format
        if rf is not None and rf.schema is not None:  # providers send the schema as prompt
            n += len(rf.name.encode()) + len(rf.schema_text.encode()) + PER_MESSAGE
    else:
        # "surrogatepass": an upstream's text may hold a lone surrogate (valid JSON, not valid
        # Unicode); it counts the 3 bytes any other character of its range would.
        n = len((text or "").encode("utf-8", "surrogatepass"))
    return TokenCount(n, exact=False, method="utf-8 bytes upper bound")


#: The longest token, in UTF-8 bytes, of the vocabularies a prompt may meet: 128 in both
#: cl100k_base and o200k_base (measured). No tokenizer with tokens at most that long makes
#: fewer than ``bytes / 128`` tokens of a text, so that is a count a prompt surely needs.
MAX_TOKEN_BYTES = 128


def prompt_bounds(request: AIRequest) -> tuple[int, int]:
    """``(upper_bound(request).tokens, lower_bound(request))``, each message's bytes measured
    once."""
    if request.tools or request.tool_choice is not None:
        return upper_bound(request).tokens, lower_bound(request)
    messages = request.messages
    n = request._ascii_bytes  # measured when the request was validated (plain ASCII text)
    if n is not None:
        return PER_REQUEST + n + PER_MESSAGE * len(messages), -(-n // MAX_TOKEN_BYTES)
    n = 0
    for m in messages:  # one pass, no generator: this runs for every request
        c = m.content
        if type(c) is not str or m.tool_calls or m.name is not None or m.tool_call_id is not None:
            # images, tool calls, a name or a call id: the full count, these included
            return upper_bound(request).tokens, lower_bound(request)
        n += len(c) if c.isascii() else len(c.encode())
    return PER_REQUEST + n + PER_MESSAGE * len(messages), -(-n // MAX_TOKEN_BYTES)


def possible(usage: Usage, text: str, calls: Sequence[ToolCall] = ()) -> bool:
    """Whether ``usage`` may be true of an answer of ``text`` and ``calls`` (or is not the
    provider's report): what :meth:`TokenManager.credible` keeps as it is."""
    return usage.source != "reported" or (
        usage.input_tokens > 0 and usage.output_tokens * MAX_TOKEN_BYTES >= len(text)
        and (usage.output_tokens > 0 or not calls))


class Recount:
    """A request's ``RequestShape.recount``: the ``count_tokens`` hook's count of its prompt
    on a card (:meth:`TokenManager.hook_count`). One object per request, where a lambda made
    a function and two cells."""

    __slots__ = ("count", "request")

    def __init__(self, count: Callable[[ModelCard, AIRequest], TokenCount | None],
                 request: AIRequest) -> None:
        self.count, self.request = count, request

    def __call__(self, card: ModelCard) -> TokenCount | None:
        return self.count(card, self.request)


def lower_bound(request: AIRequest) -> int:
    """A prompt token count no tokenizer goes below (see :data:`MAX_TOKEN_BYTES`): used to
    exclude a model only when a prompt surely does not fit its window."""
    n = sum(len(m.content.encode() if type(m.content) is str else m.text.encode())
            for m in request.messages)
    return -(-n // MAX_TOKEN_BYTES)


@attrs.frozen
class Estimate:
    """The worst case of one attempt on one model: prompt tokens (exact or upper bound, never
    more than the context window), the most output it may produce (the ``max_tokens`` the
    manager sends upstream), and the cost of both (None if the model is unpriced).
    ``defaulted``: the request gave no ``max_tokens``; ``max_output`` came from the model's
    output limit or ``default_max_tokens``. ``choices``: the request's ``n``; each answer may
    produce ``max_output`` tokens, so the worst case is ``total_output`` of them.

    An estimate made with ``lazy=True`` (:meth:`TokenManager.estimate`) counts the prompt
    only when ``prompt`` or ``worst_case_cost`` is first read (``counted`` says whether it
    has been): nothing in a request without a budget, a cost ceiling or context pressure
    reads them, so such a request never runs the tokenizer."""

    _prompt: TokenCount | None = attrs.field(alias="prompt")
    max_output: int
    _worst_case_cost: Decimal | None = attrs.field(alias="worst_case_cost")
    defaulted: bool = False
    choices: int = 1
    #: What counts the prompt on first read, and the price of the model (a lazy estimate).
    _count: Callable[[], TokenCount] | None = attrs.field(default=None, eq=False, repr=False,
                                                          alias="_count")
    _card: ModelCard | None = attrs.field(default=None, eq=False, repr=False, alias="_card")

    @property
    def total_output(self) -> int:
        """The most output the attempt may produce: ``max_output`` for each of ``choices``."""
        return self.max_output * self.choices

    @property
    def counted(self) -> bool:
        """Whether the prompt has been counted (always, unless the estimate is lazy)."""
        return self._count is None

    def _resolve(self) -> None:
        count, card = self._count, self._card
        assert count is not None and card is not None
        counted = count()
        if counted.tokens > card.context_window:
            counted = TokenCount(card.context_window, counted.exact, counted.method)
        object.__setattr__(self, "_prompt", counted)
        object.__setattr__(self, "_worst_case_cost", _worst(card, counted, self.total_output))
        object.__setattr__(self, "_count", None)

    @property
    def prompt(self) -> TokenCount:
        if self._count is not None:
            self._resolve()
        assert self._prompt is not None
        return self._prompt

    @property
    def worst_case_cost(self) -> Decimal | None:
        if self._count is not None:
            self._resolve()
        return self._worst_case_cost

    @property
    def worst_case_usage(self) -> Usage:
        prompt = self.prompt
        return Usage(prompt.tokens, self.total_output,
                     source="counted" if prompt.exact else "estimated")


def _worst(card: ModelCard, counted: TokenCount, output: int) -> Decimal | None:
    """The cost of ``counted`` prompt tokens and ``output`` output tokens on ``card`` (with n
    answers, ``output`` is all of theirs; the prompt is read, and billed, once)."""
    price = card.price
    if price is None:
        return None
    if (price.cached_input is not None and price.cached_input > price.input) or (
            price.tiers and any(t.cached_input is not None and t.cached_input > t.input
                                for t in price.tiers)):
        # Cached input dearer than fresh (a cache write): the worst case caches it all.
        return max(price.cost_of(counted.tokens, output, counted.tokens),
                   price.cost_of(counted.tokens, output))
    return price.cost_of(counted.tokens, output)


#: How far a prompt's exact count may exceed :func:`upper_bound` for the check that lets a
#: lazy estimate skip counting (chat templates that add a default system prompt or more
#: than ``PER_MESSAGE`` tokens per message): a fixed allowance, one per message, and a
#: quarter of the bound. Within it, the output cap fits whatever the exact count is.
PRESSURE_SLACK = 1024
PRESSURE_PER_MESSAGE = 32


def ceiling(bound: int, request: AIRequest) -> int:
    """What a prompt whose :func:`upper_bound` is ``bound`` counts at most, whatever the
    tokenizer and chat template (``bound`` plus the slack of :data:`PRESSURE_SLACK`)."""
    return bound + PRESSURE_SLACK + PRESSURE_PER_MESSAGE * len(request.messages) + bound // 4


#: A prompt whose :func:`upper_bound` reaches this many tokens is counted in a worker thread
#: (:meth:`TokenManager.count_prompts_off_loop`): tiktoken took about 0.5 s on a 4 MB prompt,
#: during which the event loop served no other request. Below it a count takes under about
#: 10 ms, less than a thread's round trip costs a small request.
OFF_LOOP_TOKENS = 100_000


@attrs.define
class TokenManager:
    """Counting, pricing and budget enforcement. ``counter`` is the ``count_tokens`` hook."""

    counter: Counter
    backend: BudgetBackend
    limits: Sequence[BudgetLimit] = ()
    allow_unpriced: bool = False
    reservation_ttl: float = 600.0
    metrics: Metrics | None = None
    #: The output cap of a request without ``max_tokens`` (capped by the model's limits);
    #: None: the model's ``max_output_tokens``, else :data:`DEFAULT_OUTPUT_CAP`.
    default_max_tokens: int | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # (provider, model, budget key) -> (charges, valid from, valid until): the charges of an
    # attempt change only at midnight UTC (day and month buckets), and each attempt asks
    # twice (reservation, ledger row). Keyed by the ``limits`` object it was built for.
    _charges: dict[tuple[str, str, str | None], tuple[tuple[Charge, ...], datetime, datetime]] = \
        attrs.field(factory=dict, init=False, repr=False, eq=False)
    _charges_limits: object = attrs.field(default=None, init=False, repr=False, eq=False)
    # Models whose reported usage could not be true once (see credible): warned about once.
    _doubted: set[str] = attrs.field(factory=set, init=False, repr=False, eq=False)
    # (id of a request, card id) -> (the request, weakly; its prompt's count): the prompts
    # counted off the event loop, read by the attempt's estimates (never kept alive here).
    _off_loop: dict[tuple[int, str], tuple[weakref.ref[AIRequest], TokenCount | None]] = \
        attrs.field(factory=dict, init=False, repr=False, eq=False)

    # --- tokens --------------------------------------------------------------------------

    def hook_count(self, card: ModelCard, request: AIRequest) -> TokenCount | None:
        """The ``count_tokens`` hook's count of ``request``'s prompt on ``card`` (None: no
        counter knows the model), from :meth:`count_prompts_off_loop` when it counted it."""
        if self._off_loop:
            hit = self._off_loop.get((id(request), card.id))
            if hit is not None and hit[0]() is request:  # ids are reused once a request is gone
                return hit[1]
        return self.counter(card, request, None)

    def count_prompt(self, card: ModelCard, request: AIRequest) -> TokenCount:
        return self.hook_count(card, request) or upper_bound(request)

    async def count_prompts_off_loop(self, cards: Sequence[ModelCard], request: AIRequest) -> None:
        """Count a large prompt on ``cards`` in a worker thread, so the event loop serves
        other requests meanwhile (see :data:`OFF_LOOP_TOKENS`); :meth:`hook_count` and
        :meth:`count_prompt` then answer from these counts while the request lives.
        Cancelled (the deadline, a client gone), the request ends at once and the thread's
        counts are dropped."""
        todo = [c for c in cards if (hit := self._off_loop.get((id(request), c.id))) is None
                or hit[0]() is not request]
        if not todo:
            return

        def count() -> list[TokenCount | None]:
            return [self.counter(card, request, None) for card in todo]

        counts = await anyio.to_thread.run_sync(count, abandon_on_cancel=True)
        for k in [k for k, (ref, _) in self._off_loop.items() if ref() is None]:
            del self._off_loop[k]
        ref = weakref.ref(request)
        for card, n in zip(todo, counts, strict=True):
            self._off_loop[(id(request), card.id)] = (ref, n)

    def count_text(self, card: ModelCard, text: str) -> TokenCount:
        """The tokens of ``text`` an upstream sent (a stream's output). A lone surrogate in it
        is counted as U+FFFD: tokenizers encode text to UTF-8, which it cannot be."""
        return self.counter(card, None, _valid_unicode(text)) or upper_bound(text=text)

    def output_cap(self, request: AIRequest, card: ModelCard) -> int:
        """What a request asks for at most: its ``max_tokens``, else ``default_max_tokens``,
        else the model's ``max_output_tokens``, else :data:`DEFAULT_OUTPUT_CAP` (never the
        whole context window), before the model's limits cap it."""
        if request.max_tokens is not None:
            return request.max_tokens
        return self.default_cap(card)

    def default_cap(self, card: ModelCard) -> int:
        """:meth:`output_cap` of a request without ``max_tokens``."""
        if self.default_max_tokens is not None:
            return self.default_max_tokens
        return card.max_output_tokens or DEFAULT_OUTPUT_CAP

    def estimate(self, request: AIRequest, card: ModelCard,
                 prompt: TokenCount | None = None, *, lazy: bool = False,
                 bound: int | None = None) -> Estimate:
        """The worst case of sending ``request`` to ``card``: the prompt (at most the context
        window: a longer one cannot be taken) and the output cap the manager sends upstream
        (:meth:`output_cap`, within the model's output limit and the room the prompt leaves:
        with a prompt counted by its upper bound and no ``max_tokens``, the room that bound
        leaves, so an output cap chosen for the caller never overflows a strict upstream).

        ``lazy``: the caller needs only ``max_output`` now. When the prompt's cheap upper
        bound shows it leaves the window room for the whole output cap (with the slack of
        :data:`PRESSURE_SLACK`), the count cannot change ``max_output``: the estimate then
        counts the prompt only if its ``prompt`` or ``worst_case_cost`` is read. ``bound``:
        :func:`upper_bound` of ``request``, if the caller has it already."""
        if lazy and prompt is None:
            if bound is None:
                bound = upper_bound(request).tokens
            cap = self.roomy_cap(request, card, bound)
            if cap is not None:
                return Estimate(None, cap, None, request.max_tokens is None, request.n,
                                _count=lambda: self.count_prompt(card, request), _card=card)
        counted = prompt or self.count_prompt(card, request)
        window = card.context_window
        if counted.tokens > window:
            counted = TokenCount(window, counted.exact, counted.method)
        if counted.exact or request.max_tokens is None:
            # The room the prompt surely leaves (with an upper bound, perhaps less than real).
            room = window - counted.tokens
        else:
            # A max_tokens the caller chose is not cut by our loose bound: the upstream, which
            # knows the real count, keeps prompt plus output within the window.
            room = window - min(lower_bound(request), window)
        max_output = max(min(self.output_cap(request, card), card.output_limit, room), 1)
        return Estimate(counted, max_output, _worst(card, counted, max_output * request.n),
                        request.max_tokens is None, request.n)

    def roomy_cap(self, request: AIRequest, card: ModelCard, bound: int) -> int | None:
        """The output cap of a lazy :meth:`estimate` (its ``max_output``) when the prompt,
        whose :func:`upper_bound` is ``bound``, surely leaves the window room for it (the
        count could not change it); None under context pressure (the prompt must be
        counted)."""
        cap = request.max_tokens
        if cap is None:
            cap = self.output_cap(request, card)
        limit = card.output_limit
        if limit < cap:
            cap = limit
        if ceiling(bound, request) + cap > card.context_window:
            return None
        return cap if cap > 1 else 1

    def needs_count(self, card: ModelCard, budget_key: str | None,
                    ceiling: Decimal | None) -> bool:
        """Whether an attempt on ``card`` needs its prompt counted before the call: a budget
        applies to it (the reservation is the worst case) or the request has a cost ceiling.
        Without either, :meth:`estimate` may be ``lazy``."""
        return ceiling is not None or bool(self.charges(card, budget_key))

    @staticmethod
    def bounded(usage: Usage, estimate: Estimate) -> Usage:
        """``usage`` capped by what ``estimate`` reserved, unless the provider reported it.

        The library's own counts of a partial answer (a stream broken, cancelled, stopped by
        ``break`` or the deadline, counted from its text) are estimates: no more prompt than
        was reserved, no more output than the cap sent upstream, so the settlement stays within
        the reservation. A provider's *reported* usage is kept as is: money it says it spent is
        never hidden (an excess is an overspend, logged and counted when settled)."""
        if usage.source == "reported":
            return usage
        prompt, output = estimate.prompt.tokens, estimate.total_output
        if usage.input_tokens <= prompt and usage.output_tokens <= output:
            return usage
        tin, tout = min(usage.input_tokens, prompt), min(usage.output_tokens, output)
        return Usage(tin, tout, min(usage.cached_tokens, tin), min(usage.reasoning_tokens, tout),
                     source=usage.source)

    def credible(self, usage: Usage, card: ModelCard, estimate: Estimate | Callable[[], Estimate],
                 text: str, calls: Sequence[ToolCall] = ()) -> Usage:
        """``usage`` as a provider reported it, unless it cannot be true: no prompt tokens, or
        fewer output tokens than the answer surely holds (a text of ``c`` characters is at
        least ``c / MAX_TOKEN_BYTES`` tokens; tool calls at least one). Servers that do not
        count fill in zeros, and a priced answer then cost $0: a budget never spent. Such a
        part is counted by the library instead, as for a stream without usage, within what
        the attempt reserved (``estimate``, or what makes it: only read then). Costs two
        comparisons when the report is possible."""
        if possible(usage, text, calls):
            return usage
        # Each part it could not have used is ours to count, within what was reserved; a
        # part it could have used stays as reported (spent money is never hidden).
        if not isinstance(estimate, Estimate):
            estimate = estimate()
        prompt, output = usage.input_tokens, usage.output_tokens
        if prompt <= 0:
            prompt = estimate.prompt.tokens
        if output * MAX_TOKEN_BYTES < len(text) or (output <= 0 and calls):
            counted = self.count_text(card, " ".join(
                [text, *(f"{c.name} {c.arguments}" for c in calls)])).tokens
            output = min(max(counted, 1), estimate.total_output)
        # Said once a model: a server that never counts would say it on every answer.
        (log.debug if card.id in self._doubted else log.warning)(
            "model %s reported %d prompt and %d output tokens for an answer of %d "
            "character(s) and %d tool call(s): counted %d and %d instead", card.id,
            usage.input_tokens, usage.output_tokens, len(text), len(calls), prompt, output)
        self._doubted.add(card.id)
        return Usage(prompt, output, min(usage.cached_tokens, prompt),
                     min(usage.reasoning_tokens, output), source="estimated")

    # --- cost ----------------------------------------------------------------------------

    def estimate_cost(self, card: ModelCard, usage: Usage) -> Decimal | None:
        """Cost of ``usage`` on ``card``; None when its price is unknown (never $0)."""
        return None if card.price is None else card.price.cost(usage)

    def track_usage(self, card: ModelCard, usage: Usage) -> Decimal | None:
        """Price ``usage`` and record it in the metrics; returns the cost."""
        cost = self.estimate_cost(card, usage)
        metrics = self.metrics
        if metrics is not None and metrics.recording():
            metrics.request_cost(cost, model=card.id, provider=card.provider)
        return cost

    # --- budgets -------------------------------------------------------------------------

    def charges(self, card: ModelCard, budget_key: str | None) -> tuple[Charge, ...]:
        if not self.limits:
            return ()
        now = self.now()
        if self._charges_limits is not self.limits:
            self._charges.clear()
            self._charges_limits = self.limits
        key = (card.provider, card.id, budget_key)
        hit = self._charges.get(key)
        if hit is not None and hit[1] <= now < hit[2]:
            return hit[0]
        charges = charges_for(self.limits, provider=card.provider, model_id=card.id,
                              budget_key=budget_key, now=now)
        if now.tzinfo is None:  # a naive clock (local time): not worth caching
            return charges
        if len(self._charges) >= _CHARGES_CACHED:  # caller keys are unbounded
            self._charges.clear()
        self._charges[key] = (charges, *_same_buckets(now))
        return charges

    def check_ceiling(self, card: ModelCard, estimate: Estimate, ceiling: Decimal | None) -> None:
        """Refuse before any call when the worst case is above the request's ceiling."""
        if ceiling is None:
            return
        if estimate.worst_case_cost is None:
            if not self.allow_unpriced:
                raise UnpricedModel(card.id)
            return
        if estimate.worst_case_cost > ceiling:
            raise CostCeilingExceeded(worst_case=estimate.worst_case_cost, ceiling=ceiling,
                                      model_id=card.id)

    async def check_budget(self, card: ModelCard, budget_key: str | None = None
                           ) -> list[ScopeUsage]:
        """The state of every budget bucket an attempt on ``card`` would be charged to."""
        return await self.backend.usage(self.charges(card, budget_key))

    async def reserve(self, card: ModelCard, estimate: Estimate, *, budget_key: str | None,
                      request_id: str, ttl: float | None = None,
                      charges: Sequence[Charge] | None = None) -> Reservation | None:
        """Reserve the worst case on every applicable budget, or raise. None: no budget applies.
        ``ttl``: the lease's life (default ``reservation_ttl``); it must outlive the request.
        ``charges``: :meth:`charges` of ``card`` and ``budget_key``, if the caller has them.

        A budgeted request to an unpriced model is refused (:class:`UnpricedModel`) unless
        ``allow_unpriced``; an explicit price of 0 reserves 0.
        """
        if charges is None:
            charges = self.charges(card, budget_key)
        if not charges:
            return None
        if estimate.worst_case_cost is None:
            if not self.allow_unpriced:
                raise UnpricedModel(card.id)
            return None
        try:
            r = await self.backend.reserve(charges, estimate.worst_case_cost,
                                           ttl=ttl or self.reservation_ttl, request_id=request_id)
        except BudgetExceeded as exc:
            if not estimate.defaulted:
                raise
            # Without max_tokens the reservation is the model's whole output limit (or the
            # default): say what to set rather than only that the budget is short.
            raise exc.with_hint(
                f"the request sets no max_tokens, so {estimate.max_output} output tokens were "
                f"reserved on {card.id}: set max_tokens on the request, or default_max_tokens "
                "in the configuration") from None
        # The utilization gauge reads the buckets back: a store call (a query on a durable
        # backend) that only a recording metrics SDK needs.
        if self.metrics is not None and self.metrics.recording():
            try:
                states = await self.backend.usage(charges)
            except BudgetStoreError:
                states = []  # the gauge is best effort; the reservation stands
            except BaseException:  # cancelled (the deadline) while reading it: hold nothing
                now = anyio.current_time()
                with anyio.CancelScope(shield=True, deadline=now + CLEANUP_TIMEOUT), \
                        cleanup_bound(now + CLEANUP_GRACE), \
                        contextlib.suppress(BudgetStoreError):  # else it stays a lease
                    await self.backend.release(r)
                raise
            for u in states:
                self.metrics.budget(u.scope, u.period, u.utilization)
        return r

    async def settle(self, reservation: Reservation | None, card: ModelCard,
                     cost: Decimal | None, ledger: LedgerRow | None = None) -> bool:
        """Commit ``cost`` for ``reservation`` (release it when the cost is unknown).

        ``ledger``: the attempt's row, written by the backend in the settlement's transaction;
        pass it only to a backend with ``settles_with_ledger = True``. Returns whether the row
        was handed to the backend (False: no reservation or no cost, record it yourself).
        """
        if reservation is None:
            return False
        if cost is None:  # an unpriced model under allow_unpriced has no reservation
            await self.backend.release(reservation)
            return False
        try:
            if ledger is None:
                over = await self.backend.settle(reservation, cost)
            else:
                over = await cast(SettlesWithLedger, self.backend).settle(reservation, cost,
                                                                          ledger=ledger)
        except BudgetStoreError:
            # The store failed (a timeout, say): releasing would hand back headroom the
            # attempt really spent. The lease holds the worst case until it expires.
            raise
        except Exception as exc:
            # A backend that cannot take the amount (a raw ValueError or overflow): the
            # reservation must not stay open until its lease expires. Commit what it held
            # (the most the attempt was allowed), else release it.
            what = "settled at its reserved amount"
            try:
                await self.backend.settle(reservation, reservation.amount)
            except Exception:
                what = "released"
                await self._release_quietly(reservation)
            raise BudgetStoreFailed(
                f"the budget backend could not settle {cost} USD for {card.id} "
                f"({type(exc).__name__}: {exc}); the reservation was {what}") from exc
        if over > 0:
            log.warning("model %s (provider %s) reported more than its reservation allowed: "
                        "overspent by %s USD (reserved %s, charged %s)", card.id, card.provider,
                        over, reservation.amount, cost)
        if self.metrics is not None:
            self.metrics.overspent(over, model=card.id)
        return ledger is not None

    async def _release_quietly(self, reservation: Reservation) -> None:
        try:
            await self.backend.release(reservation)
        except Exception:  # the error being raised says more; the lease expires anyway
            log.warning("could not release reservation %s after a failed settlement",
                        reservation.id, exc_info=True)

    async def release(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            await self.backend.release(reservation)
