"""``ResponseStream``: a streamed answer as it arrives, settled when it ends."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NoReturn

import anyio
import attrs

from . import upstream
from .attempt import Request, Stream, close_within, ledger_row, shielded
from .deadline import current_task
from .decision import Decision
from .errors import BudgetStoreError, DeadlineExceeded, MidStreamError, ModelError, ProviderTimeout
from .plugincheck import checked_error, chunk_problem, malformed
from .secrets import sanitize
from .types import AIResponse, ModelCard, StreamChunk, ToolCall, ToolCallDelta, Usage, assemble_tool_calls

if TYPE_CHECKING:
    from .manager import ModelManager

__all__ = ["ResponseStream"]

#: How the error of a stream broken after its first chunk begins.
_BROKE = "stream broke after its first chunk: "
#: What a read in another task returns when the stream's block closed it meanwhile.
_CLOSED = object()


class ResponseStream:
    """The answer as it arrives. Iterate for :class:`StreamChunk` objects; ``text`` and
    ``tool_calls`` so far; ``response`` (an :class:`AIResponse`) once the stream has ended,
    with the streamed tool-call pieces assembled into whole calls.

    The stream ends, and is settled (its cost charged, ``response`` set), when the iteration
    ends (the ``async for`` loop finishes or :class:`MidStreamError` is raised) or, for a
    stream left before its end, when the ``async with`` block exits.
    """

    def __init__(self, manager: ModelManager, ctx: Request, start: Stream) -> None:
        self._m, self._ctx, self._s = manager, ctx, start
        self._parts: list[str] = []
        self._tool_deltas: list[ToolCallDelta] = []
        self._pending: StreamChunk | None = start.first
        self._done = start.first is None
        self._error: BaseException | None = None
        #: The settlement failed in the store (raised once the body of ``stream()`` ends).
        self._store_error: BudgetStoreError | None = None
        self._finish_reason: str | None = None
        self._closed = False
        #: Closed before its end while nobody waited in a read: the next read is told (once).
        self._cut_short = False
        # A cancellation arrived while waiting for the upstream's next chunk.
        self._cut_waiting = False
        #: The task that opened the stream (its ``async with`` block closes it), and the
        #: cancel scope of a read under way in another task (see :meth:`_read_elsewhere`).
        self._host = current_task()
        self._reader: tuple[anyio.CancelScope, anyio.Event] | None = None
        self.response: AIResponse | None = None
        if start.first is not None:
            self._take(start.first)

    @property
    def model(self) -> ModelCard:
        return self._s.card

    @property
    def decision(self) -> Decision:
        return self._ctx.decision

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls streamed so far (the last one may still be incomplete)."""
        return assemble_tool_calls(self._tool_deltas) if self._tool_deltas else ()

    def _take(self, chunk: StreamChunk) -> None:
        if chunk.text:
            self._parts.append(chunk.text)
        if chunk.tool_calls:
            self._tool_deltas.extend(chunk.tool_calls)
        if chunk.usage is not None:
            self._s.usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.rate_limits is not None:
            self._m.limiter.observe(self._s.card, chunk.rate_limits)

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._pending is not None:
            chunk, self._pending = self._pending, None
            return chunk
        if self._done:
            await self._end()
            if self._cut_short:
                # The block ended (left, or its deadline) while the reader was between two
                # reads: the answer was cut short, which an end of iteration would hide.
                self._cut_short = False
                raise self._closed_meanwhile()
            raise StopAsyncIteration
        try:
            if current_task() is self._host:
                chunk = await self._s.iterator.__anext__()
            else:
                chunk = await self._read_elsewhere()  # type: ignore[assignment]
        except StopAsyncIteration:
            self._done = True
            await self._end()
            raise
        except BaseException as exc:
            card = self._s.card
            if isinstance(exc, ModelError):
                checked_error(exc, card.id, card.provider)
            elif upstream.foreign(exc):
                exc = upstream.unexpected(exc, model_id=card.id, provider=card.provider)
            else:  # a cancellation, KeyboardInterrupt, one of ours that is no upstream failure
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    self._cut_waiting = True
                raise
            self._done = True
            await self._broke(exc)
        if chunk is _CLOSED:
            self._cut_short = False  # told now, once
            raise self._closed_meanwhile()
        if chunk_problem(chunk) is not None:  # (a few type comparisons for a usual chunk)
            await self._junk(chunk)
        self._take(chunk)
        return chunk

    async def _broke(self, exc: ModelError) -> NoReturn:
        """The stream failed after its first chunk with ``exc``: settle it and raise the
        :class:`MidStreamError` carrying what arrived."""
        usage = exc.usage if isinstance(exc, MidStreamError) and exc.usage else None
        self._s.usage = usage or self._s.usage
        # A provider's own MidStreamError mostly says so already (the openai and
        # huggingface plugins'): once is enough in what the caller reads.
        why = str(exc).removeprefix(_BROKE)
        err = MidStreamError(f"{_BROKE}{why}",
                             partial_text=self.text, usage=self._received_usage(),
                             model_id=self._s.card.id, provider=self._s.card.provider)
        self._error = err
        await self._end()
        try:
            raise err from exc
        finally:
            sanitize(err)  # the context the raise adds may be a provider's foreign exception

    async def _junk(self, chunk: object) -> NoReturn:
        """The provider yielded what is no well-formed chunk (see ``plugincheck``): its
        stream is closed and ends as broken, charged what it received (and the usage the
        chunk carried, when that is one)."""
        card, s = self._s.card, self._s
        problem = chunk_problem(chunk)
        assert problem is not None
        self._done = True
        aclose = getattr(s.iterator, "aclose", None)
        if aclose is not None:
            await close_within(aclose, self._ctx.cleanup_deadline)
        err = malformed(problem, card.provider, card.id, chunk)
        if err.usage is not None:
            s.usage = err.usage
        await self._broke(err)

    def _closed_meanwhile(self) -> MidStreamError:
        card = self._s.card
        return MidStreamError(f"{_BROKE}the stream was closed (its async with block ended) "
                              "while another task read it", partial_text=self.text,
                              model_id=card.id, provider=card.provider)

    async def _read_elsewhere(self) -> StreamChunk | object:
        """The next chunk, read by a task other than the one whose ``async with`` block holds
        the stream. That block's exit (its end, the deadline) closes the upstream's iterator,
        which cannot be closed while another task waits in it ("aclose(): asynchronous
        generator is already running": the stream was left unsettled, its reservation open):
        :meth:`_close` cancels this read first (then :data:`_CLOSED`: the reader gets a
        MidStreamError, and the block's exit settles the stream as it ended there)."""
        left = anyio.Event()
        with anyio.CancelScope() as scope:
            self._reader = (scope, left)
            try:
                return await self._s.iterator.__anext__()
            finally:
                self._reader = None
                left.set()
        return _CLOSED

    def _received_usage(self) -> Usage:
        """What this stream is known to have used: the provider's count, else ours; either
        capped by the reservation unless the provider reported it (``TokenManager.bounded``)."""
        return self._m.tokens.bounded(self._counted_usage(), self._s.estimate)

    def _counted_usage(self) -> Usage:
        card, tm = self._s.card, self._m.tokens
        if self._s.usage is not None:
            return tm.credible(self._s.usage, card, self._s.estimate, self.text, self.tool_calls)
        text = self.text
        if self._tool_deltas:
            # The calls' names and arguments are output too; their framing is unknown here.
            text = " ".join([text, *(f"{c.name} {c.arguments}" for c in self.tool_calls)])
        out = tm.count_text(card, text)
        prompt = self._s.estimate.prompt
        source = "counted" if (out.exact and prompt.exact and not self._tool_deltas) else "estimated"
        return Usage(prompt.tokens, out.tokens, source=source)  # type: ignore[arg-type]

    async def _end(self) -> None:
        """The iteration is over: settle now, so ``response`` is there after the loop."""
        await shielded(self._close, deadline=self._ctx.cleanup_deadline)

    async def _close(self) -> None:
        """Settle the attempt and set ``response``; runs once (shielded by the caller)."""
        if self._closed:
            return
        self._closed = True
        s, card, m = self._s, self._s.card, self._m
        finished = self._done
        if not self._done:
            self._done = True
            # A reader in another task may be between reads, or its read may have had its
            # chunk already when the cancel came (it returns the chunk, not _CLOSED): either
            # way its next read is told, where it ended its iteration as if the answer were
            # whole (tests/core/test_stream_tasks.py). Set with ``_done``, before anything
            # awaits: the reader resumes from ``left.wait()`` below before this task does,
            # and its next read comes before this task's next step.
            self._cut_short = True
            if self._reader is not None:  # another task waits for the upstream: stop it first
                self._cut_waiting = True
                scope, left = self._reader
                scope.cancel()
                await left.wait()  # its next turn, or later if shielded (_close is bounded)
            aclose = getattr(s.iterator, "aclose", None)
            if aclose is not None:
                await close_within(aclose, self._ctx.cleanup_deadline)
            # Cut or left before its end: a provider that counted what the attempt read and
            # generated (a local model) says so on its iterator, once closed; that is charged,
            # not our count of the text that reached us (see Provider.stream).
            counted = getattr(s.iterator, "usage", None)
            if isinstance(counted, Usage):
                s.usage = counted
        if self._error is None and not finished and self._ctx.past_deadline():
            # Cut by the request's deadline, not finished nor left by the caller: a timeout.
            # Waiting on the upstream, it is the model's failure (breaker, stats); else the
            # caller's own processing ran out the clock.
            ctx = self._ctx
            self._error = (ProviderTimeout(f"stream cut by the request's {ctx.timeout:g}s deadline "
                                           f"after {len(self._parts)} chunk(s)",
                                           model_id=card.id, provider=card.provider)
                           if self._cut_waiting
                           else DeadlineExceeded(timeout=ctx.timeout, attempts=ctx.records))
        usage = self._received_usage()
        if self._ctx.lease is not None:  # the stream's rate-limit lease: its real tokens
            lease, self._ctx.lease = self._ctx.lease, None
            await m.limiter.settle(lease, usage.input_tokens + usage.output_tokens)
        cost = m.tokens.track_usage(card, usage)
        s.cost = cost
        ok = self._error is None
        latency = time.perf_counter() - s.started
        # The chain recorded the attempt when the first chunk arrived; complete the record
        # (its ledger row goes with the settlement) and report it now that its usage is known.
        recs, ctx = self._ctx.records, self._ctx
        rec = attrs.evolve(recs[-1], usage=usage, cost=cost, outcome="ok" if ok else "error",
                           error=self._error, latency_s=latency)
        error_type = None if ok else type(self._error).__name__
        try:
            await m._settle(ctx, card, s.reservation, cost, lambda scopes: ledger_row(
                ctx, rec.number, card, rec.outcome, usage, cost, error_type, latency, scopes),
                shield=False)  # _close runs shielded
        except BudgetStoreError as exc:
            m._lease_left(s.reservation, "settled", exc)
            self._store_error = exc
        health = ok or isinstance(self._error, ModelError)
        m.stats.finished(card.id, ok=ok, latency_s=latency, counts=health)
        if ok:
            m.breakers.success(card.id)
        elif health:
            m.breakers.failure(card.id, self._error)
        else:
            m.breakers.neutral(card.id)
        recs[-1] = rec
        m._report(ctx, rec, card)
        self.response = AIResponse(self.text, card.id, usage, cost,
                                   self._ctx.decision.answered(card.id, recs), tuple(recs),
                                   self._finish_reason, self._ctx.id, self.tool_calls)
