"""What an attempt is charged when its request may have reached the provider but its answer
never arrived (``[budget] charge_unanswered``).

A provider bills the work it did, whether or not its answer was read: an OpenAI-compatible
server keeps generating a non-streamed answer after its client left, and sends a stream's
first chunk only once it has read the whole prompt. An attempt (a stream: one that received
no chunk yet) cut by the request's deadline, by the caller's cancellation (a gateway client
that disconnected), by ``attempt_timeout``, or failed by a read timeout or a connection lost
after the request left has spent money nobody can see; so has one whose 200 answer came but
could not be read (a ``MalformedResponse``: not JSON, no choices; a stream whose first event
cannot be read; the provider generated and billed it), and one a
gateway in front of the provider answered 504 (it forwarded the request and gave up waiting,
the provider may still be generating). Charging them $0 would hide it (spent money is never
hidden).
So such an attempt is charged by policy, and its usage says it is an assumption
(``source = "cut"``), never a report:

- ``worst_case`` (the default): its reservation's worst case, the prompt plus the output cap
  sent upstream. It is what the provider may bill at most, and it was reserved already, so a
  budget can never be overspent by it; a budget spends faster than it may have had to.
- ``prompt``: the prompt only (what any provider bills as soon as it read the request).
- ``nothing``: $0, as before: hides what the provider may have billed.

What provably never reached the provider costs nothing: a connection never made (refused,
its timeout, a pool timeout: the :class:`~squirrel_models.errors.ModelError` says
``sent = False``), an answer with an error status (a 4xx, a 429, a 5xx but 504: refused,
nothing generated; a proxy's 502/503: not forwarded), readable or not, an attempt refused
before any call (a budget, a rate limit, an open breaker), a call cancelled while it still
waited for a connection in its client's pool or for a local model's turn (the provider marks
the cancellation, :func:`mark_unsent`). What a provider counted is charged instead of the
policy's assumption: a local model's count rides on the cancellation (``usage``). A stream
that received a chunk is charged what it received (its prompt and the output counted, or what
the provider counted: see ``Provider.stream``), never by this policy.
"""

from __future__ import annotations

from collections.abc import Collection
from types import CodeType

import anyio

from .config import UnansweredCharge
from .errors import ModelError, ProviderConnectionError, ProviderTimeout
from .responses import Usage
from .tokens import Estimate

__all__ = ["charged_usage", "mark_unsent", "mark_unsent_if_in", "may_have_reached", "sole_cancellation"]


def may_have_reached(exc: BaseException) -> bool:
    """Whether the failed attempt's request may have reached the provider, its provider call
    having started: what the error says (``ModelError.sent``), else a timeout or a lost
    connection without a status (no answer came), or a cancellation (the deadline's or the
    caller's: the core cannot know how far the call got, so it assumes it left, unless the
    provider marked the cancellation ``sent = False``: it cut the call while it still waited
    for a connection or its model's turn, see :func:`mark_unsent`; a ``KeyboardInterrupt``
    that stopped the call counts as one). An answer with a status,
    and any other error, did not make the provider bill a generation."""
    if isinstance(exc, ModelError):
        if exc.sent is not None:
            return exc.sent
        return exc.status_code is None and isinstance(exc, ProviderTimeout | ProviderConnectionError)
    return (isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt)
            and getattr(exc, "sent", None) is not False)


def mark_unsent(cancelled: BaseException) -> None:
    """Say on a cancellation that it cut a provider's call before the call's
    request left: still waiting for a connection in the client's pool, or for a local
    model's turn. The core then charges the attempt nothing (:func:`may_have_reached`).
    Called by a provider on the cancellation's way out, so the call that succeeds pays
    nothing for it."""
    try:
        cancelled.sent = False  # type: ignore[attr-defined]
    except AttributeError:  # an exception class with __slots__: it stays "may have left"
        pass


def sole_cancellation(exc: BaseException) -> BaseException | None:
    """The cancellation ``exc`` is: ``exc`` itself, or, for an exception group holding
    nothing but cancellations (trio's nurseries hand a cancellation out so: httpcore's
    connect under trio runs in one), its first; None for anything else."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, cancelled):
        return exc
    if not isinstance(exc, BaseExceptionGroup):
        return None
    if exc.split(cancelled)[1] is not None:
        return None
    cut: BaseException = exc
    while isinstance(cut, BaseExceptionGroup):
        cut = cut.exceptions[0]
    return cut


def mark_unsent_if_in(exc: BaseException, codes: Collection[CodeType | None]) -> None:
    """:func:`mark_unsent` the cancellation ``exc`` is (see :func:`sole_cancellation`) if it
    was raised inside a function whose code is one of ``codes``: a provider's client's
    function that runs before any byte of a request is written (its connect). Read from the
    traceback, on the cancellation's way out only: nothing is recorded per request."""
    cut = sole_cancellation(exc)
    if cut is None:
        return
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            mark_unsent(cut)
            return
        tb = tb.tb_next


def charged_usage(policy: UnansweredCharge, estimate: Estimate) -> Usage | None:
    """The usage ``policy`` charges an attempt that may have reached the provider unanswered
    (``estimate`` is its reservation's worst case); None for ``nothing``."""
    if policy == "nothing":
        return None
    prompt = estimate.prompt.tokens
    return Usage(prompt, estimate.total_output if policy == "worst_case" else 0, source="cut")
