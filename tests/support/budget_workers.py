"""Several processes on one SQL budget (SQLite file, PostgreSQL schema): the child workers and
the parent's checks, shared by the test suites of both backends.

Every function takes ``make``, a factory of a fresh, unopened budget backend. Children get it
pickled, so it must be a module-level function or a :func:`functools.partial` of one, kept in
the backend's own test package (``tests/<backend>/workers.py``): this module imports core
alone, so a spawned child loads it in any session, whatever plugins that session installed.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from squirrel_models import AIRequest, AIResponse, ModelCard, ModelManager, Price
from squirrel_models.budget import Charge, LedgerRow
from squirrel_models.errors import BudgetExceeded, SquirrelError
from squirrel_models.plugins import PluginManager
from squirrel_models.sqlbudget import to_nanos
from squirrel_models.testing import ScriptedPlugin, ScriptedProvider

from .stalls import runqueue_wait
from .together import Together, start_together

Make = Callable[[], Any]

#: What ``hammer`` reserves against: two charges with the same limit.
LIMIT = Decimal("2.00")
CHARGES = (Charge("global", "total", "total", LIMIT), Charge("key:team", "day", "2026-11-26", LIMIT))
#: What ``hold`` reserves against.
HELD = Charge("global", "total", "total", Decimal("1.00"))
#: What ``stream_spend`` spends: a budget a few worst cases wide, spent to the end by several
#: processes.
STREAM_LIMIT = Decimal("0.5")


def slice_options(slices: bool) -> dict[str, Any]:
    """The backend options of a process test with ``slices`` on (else none): leases short
    enough to expire before a recovery looks (the tests wait past them)."""
    return {"slices": True, "slice_lease_s": 5.0} if slices else {}


# --- children -----------------------------------------------------------------------------


def hammer(make: Make, seed: int, reservations: int, tasks: int) -> dict[str, Any]:
    """Make ``reservations`` reservations from ``tasks`` concurrent tasks, once the other
    children are ready too (:mod:`tests.support.together`); after every granted reserve, check
    committed + reserved <= limit on every charge. Returns what was spent."""

    async def main() -> dict[str, Any]:
        backend = make()
        rng = random.Random(seed)
        out: dict[str, Any] = {"granted": 0, "refused": 0, "settled_nanos": 0, "violations": [],
                               "peak_nanos": 0}
        await backend.open()
        await start_together()  # real contention
        todo = iter(range(reservations))

        async def worker() -> None:
            for _ in todo:
                amount = Decimal(rng.randint(1, 10)) / 100
                try:
                    r = await backend.reserve(CHARGES, amount, ttl=600, request_id=f"{seed}")
                except BudgetExceeded:
                    out["refused"] += 1
                    await anyio.lowlevel.checkpoint()
                    continue
                out["granted"] += 1
                for u in await backend.usage(CHARGES):
                    total = u.committed + u.reserved
                    out["peak_nanos"] = max(out["peak_nanos"], to_nanos(total))
                    if total > u.limit:
                        out["violations"].append(f"{u.scope}: {total} > {u.limit}")
                await anyio.sleep(rng.random() / 500)
                if rng.random() < 0.7:
                    spent = amount * rng.randint(0, 50) / 100
                    await backend.settle(r, spent)
                    out["settled_nanos"] += to_nanos(spent)
                else:
                    await backend.release(r)

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)
        await backend.aclose()
        return out

    return anyio.run(main)


def stream_spend(budget: dict[str, Any], seed: int, seconds: float, tasks: int,
                 limit: Decimal = STREAM_LIMIT) -> dict[str, Any]:
    """Send requests for ``seconds`` from ``tasks`` concurrent tasks through a ModelManager on
    the budget ``budget`` (``[budget]`` without its limits: backend and options), once the
    other children are ready too (:mod:`tests.support.together`), limited to
    ``limit`` USD: answers, streams read to the end, left by ``break``, cancelled, and broken
    mid-way, with and without ``max_tokens``, to an upstream that sends no usage on streams
    (the library counts what was received). Returns counts by outcome."""
    from tests.support.honest import CARD, HonestUpstream

    async def main() -> dict[str, Any]:
        rng = random.Random(seed)
        out: dict[str, Any] = {"ok": 0, "refused": 0, "errors": 0, "kinds": {}}
        config = {"budget": {**budget,
                             "limits": [{"scope": "global", "limit": str(limit)}]},
                  "timeout": 20, "fallback": {"max_attempts": 1}}
        async with ModelManager(config) as mm:
            mm.register_model(CARD, HonestUpstream("h", [CARD]))
            await start_together()
            end = time.time() + seconds

            async def one(kind: str, req: AIRequest) -> None:
                if kind == "complete":
                    await mm.complete(req)
                    return
                with anyio.CancelScope() as scope:
                    async with mm.stream(req) as s:
                        n = 0
                        async for _ in s:
                            n += 1
                            if n == 3 and kind == "break":
                                break
                            if n == 3 and kind == "cancel":
                                scope.cancel()

            async def worker() -> None:
                while time.time() < end:
                    kind = rng.choice(["complete", "stream", "break", "cancel", "broken"])
                    req = AIRequest.from_prompt("hello " * rng.randint(1, 200),
                                                max_tokens=rng.choice([None, 16, 64, 300]),
                                                metadata={"mode": "break"} if kind == "broken" else {})
                    out["kinds"][kind] = out["kinds"].get(kind, 0) + 1
                    try:
                        await one(kind, req)
                        out["ok"] += 1
                    except BudgetExceeded:
                        out["refused"] += 1
                        await anyio.sleep(0.01)
                    except SquirrelError:
                        out["errors"] += 1

            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(worker)
        return out

    return anyio.run(main)


def hold(make: Make, held: int, settle_first: int, ready: Any) -> None:
    """Settle ``settle_first`` reservations of 0.10, then hold ``held`` reservations of 0.10
    (ttl 30 s) on :data:`HELD`, tell the parent, and wait to be killed."""

    async def main() -> None:
        backend = make()
        for _ in range(settle_first):
            r = await backend.reserve([HELD], Decimal("0.10"), ttl=30)
            await backend.settle(r, Decimal("0.10"))
        for _ in range(held):
            await backend.reserve([HELD], Decimal("0.10"), ttl=30)
        ready.set()
        await anyio.sleep(3600)

    anyio.run(main)


def scripted_models(name: str, price: Price, steps: list[Any], per_model: int, rng: random.Random,
                    **provider_options: Any) -> tuple[PluginManager, list[ModelCard], ScriptedProvider]:
    """A plugin manager with the scripted provider ``name`` serving models ``a`` and ``b``
    (streaming, 16 output tokens at most), each scripted with ``per_model`` steps drawn from
    ``steps``, for children that spend through a ModelManager."""
    pm = PluginManager()
    pm.register(ScriptedPlugin(), "scripted")
    cards = [ModelCard.for_provider(name, m, provider_type="scripted", price=price,
                                    features={"streaming"}, max_output_tokens=16) for m in ("a", "b")]
    p = ScriptedProvider(name, cards, **provider_options)
    for m in ("a", "b"):
        p.script(m, *(rng.choice(steps) for _ in range(per_model)))
    return pm, cards, p


async def complete_or_stream(mm: ModelManager, req: AIRequest, *, stream: bool) -> AIResponse:
    """Send ``req`` through ``mm``: as a stream read to its end, or as one completion; the
    answer."""
    if stream:
        async with mm.stream(req) as s:
            async for _ in s:
                pass
        assert s.response is not None
        return s.response
    return await mm.complete(req)


# --- parent -------------------------------------------------------------------------------


def hammer_in_processes(make: Make, processes: int, per_process: int, *, timeout: float
                        ) -> list[dict[str, Any]]:
    """Run :func:`hammer` (6 tasks each) in ``processes`` spawned processes that start
    together; their results."""
    ctx = multiprocessing.get_context("spawn")
    together = Together(ctx, processes)
    with ProcessPoolExecutor(processes, mp_context=ctx, **together.pool_options()) as pool:
        futures = [pool.submit(hammer, make, seed, per_process, 6) for seed in range(processes)]
        together.go(futures)
        return [f.result(timeout=timeout) for f in futures]


def assert_never_overspent_and_nothing_leaked(make: Make, results: list[dict[str, Any]],
                                              reservations: int) -> None:
    """After :func:`hammer_in_processes` (``reservations`` in all): no child saw the limit
    exceeded, the budget was really contended, and the backend ``make`` opens holds every
    settlement once, no reservation and no audit finding."""
    assert [v for r in results for v in r["violations"]] == []
    assert max(r["peak_nanos"] for r in results) <= to_nanos(LIMIT)
    granted = sum(r["granted"] for r in results)
    refused = sum(r["refused"] for r in results)
    assert granted + refused == reservations
    assert granted >= 100 and refused > 0  # the budget was really contended and ran out

    async def check() -> None:
        backend = make()
        spent = sum(r["settled_nanos"] for r in results)
        for u in await backend.usage(CHARGES):
            assert to_nanos(u.committed) == spent  # every settle counted, once, on every charge
            assert u.reserved == 0
            assert u.committed <= u.limit
        assert await backend.audit() == {"open": 0, "expired": 0, "mismatched": []}
        await backend.aclose()

    anyio.run(check)


def assert_stream_spend_accounted(make: Make, limit: Decimal) -> None:
    """After :func:`stream_spend` processes on a budget of ``limit``: the backend ``make``
    opens holds nothing reserved, no open lease and no audit finding, commits no more than the
    limit and exactly the ledger's costs, and no row charges more output than an attempt may
    be sent (the model's output limit)."""

    async def check() -> None:
        backend = make()
        (u,) = await backend.usage([Charge("global", "total", "total", limit)])
        rows = await backend.rows()
        audit = await backend.audit()
        await backend.aclose()
        assert u.reserved == 0 and audit["open"] == 0 and audit["mismatched"] == []
        assert u.committed <= u.limit
        assert to_nanos(u.committed) == sum(to_nanos(r.cost) for r in rows if r.cost is not None)
        assert max(r.output_tokens for r in rows) <= 512

    anyio.run(check)


def sigkill_when_ready(target: Callable[..., None], args: Iterable[Any], *, timeout: float = 30,
                       message: str = "the child never got ready") -> int | None:
    """Start ``target(*args, ready)`` in a spawned process, SIGKILL it once it sets ``ready``
    (an Event), and return its exit code. The child fails to get ready if it exits first, or
    takes ``timeout`` seconds beyond the time it waited for a CPU: a fresh interpreter imports
    for seconds of CPU, and at load 20 it gets a tenth of one."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=target, args=(*args, ready))
    t0 = time.monotonic()
    child.start()
    try:
        while not ready.wait(0.05):
            assert child.is_alive(), f"{message}: it exited with {child.exitcode}"
            off_cpu = runqueue_wait(child.pid)
            assert time.monotonic() - t0 - off_cpu < timeout, (
                f"{message} in {time.monotonic() - t0:.1f} s, {off_cpu:.1f} s of them waiting for a CPU")
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
    return child.exitcode


def assert_leases_expire_and_spend_survives(make: Make) -> None:
    """After a :func:`hold` child (5 held, 3 settled) was SIGKILLed: its leases keep their
    headroom until they expire, reconcile frees exactly them, and the settled spend stays."""

    async def recover() -> None:
        now = time.time()
        backend = make()
        backend.clock = lambda: now
        (u,) = await backend.usage([HELD])
        assert (u.committed, u.reserved) == (Decimal("0.3"), Decimal("0.5"))
        with pytest.raises(BudgetExceeded):  # the dead process's leases still hold headroom
            await backend.reserve([HELD], Decimal("0.5"), ttl=30)
        backend.clock = lambda: now + 31  # 31 s later (frozen clock): the leases have expired
        assert await backend.reconcile() == 5
        (u,) = await backend.usage([HELD])
        assert (u.committed, u.reserved) == (Decimal("0.3"), Decimal(0))
        r = await backend.reserve([HELD], Decimal("0.7"), ttl=30)
        await backend.settle(r, Decimal("0.7"))
        (u,) = await backend.usage([HELD])
        assert (u.committed, u.reserved) == (Decimal("1.0"), Decimal(0))
        assert (await backend.audit())["mismatched"] == []
        await backend.aclose()

    anyio.run(recover)


def assert_slices_charged_in_full(make: Make) -> None:
    """After a :func:`hold` child with slices on (5 held, 3 settled) was SIGKILLed: its slice
    holds at least what it reserved and spent until the lease expires; then the store charges
    the slice in full (nothing stays reserved) with a ledger row naming it, and the spend it
    settled is inside that charge."""

    async def recover() -> None:
        now = time.time()
        backend = make()
        backend.clock = lambda: now
        (u,) = await backend.usage([HELD])
        assert u.committed + u.reserved >= Decimal("0.8")  # 0.3 spent, 0.5 held: all covered
        before, committed = u.committed + u.reserved, u.committed
        with pytest.raises(BudgetExceeded):  # the dead process's slice still holds its room
            await backend.reserve([HELD], Decimal("0.5"), ttl=30)
        backend.clock = lambda: now + 31  # past the slice's lease (30 s, frozen clock)
        assert await backend.reconcile() >= 1
        (u,) = await backend.usage([HELD])
        assert (u.committed, u.reserved) == (before, Decimal(0))  # charged in full
        charged = [r for r in await backend.rows() if r.request_id.startswith("slice:")]
        assert charged and all(r.outcome == "charged" for r in charged)
        assert sum(r.cost for r in charged if r.cost is not None) == before - committed
        assert (await backend.audit())["mismatched"] == []
        await backend.aclose()

    anyio.run(recover)


# --- a process stalled past its slice's lease (SIGSTOP), then woken (SIGCONT) --------------

#: The slice options of the stalled child: a lease that expires soon after the stop.
STALL_OPTIONS = {"slices": True, "slice_flush_s": 0.2, "slice_lease_s": 2.0}


def spend_then_stall(make: Make, ready: Any, go: Any) -> None:
    """Settle two reservations of 0.05 (with their ledger rows) from a slice, hold a third
    (a call in flight), tell the parent, which stops this process past the slice's lease and
    wakes it; once the parent sets ``go``, the call in flight ends (0.03) and the process
    closes."""

    async def main() -> None:
        backend = make()
        for i in range(2):
            r = await backend.reserve([HELD], Decimal("0.05"), ttl=600, request_id=f"spent-{i}")
            await backend.settle(r, Decimal("0.05"), ledger=LedgerRow(
                f"spent-{i}", 1, "p", "p/m", "ok", cost=Decimal("0.05"), scopes=("global",)))
        flight = await backend.reserve([HELD], Decimal("0.05"), ttl=600, request_id="flight")
        ready.set()
        while not go.is_set():  # stopped and woken in here; the background flush runs
            await anyio.sleep(0.05)
        await backend.settle(flight, Decimal("0.03"), ledger=LedgerRow(
            "flight", 1, "p", "p/m", "ok", cost=Decimal("0.03"), scopes=("global",)))
        await backend.aclose()

    anyio.run(main)


def assert_a_stalled_slice_gives_its_room_back(make: Make, plain: Make, *,
                                               settled: Callable[[], bool] | None = None,
                                               restop: bool = False,
                                               store_view: Callable[[], str] | None = None
                                               ) -> dict[str, Any]:
    """Run :func:`spend_then_stall` (``make``: its backend, slices on with
    :data:`STALL_OPTIONS`), SIGSTOP it past its lease while this process (``plain``: slices
    off) samples the store every 2 ms and spends all the room left; SIGCONT it: the room its
    slice never used comes back within a few flushes and is spent here too. No sample over
    the limit; at the end committed = the ledger's costs = every settlement, nothing
    reserved. Returns the figures.

    ``settled``: whether every call the stopped child sent has ended at the store, waited for
    before its slice is read. A server that runs calls for its clients (PostgreSQL) must get
    there while the child stays stopped; with ``restop``, a store the child runs itself
    (SQLite: a process stopped inside its transaction holds the file's write lock until it
    runs again) gets there only if the stop came between two calls, so a child stopped inside
    one is woken and stopped again. ``store_view``: what the store says of the child's
    sessions, for the failure messages."""
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=spend_then_stall, args=(make, ready, go))
    child.start()
    out: dict[str, Any] = {"samples": 0, "peak": Decimal(0), "over": []}

    def wait_for(what: str, done: Callable[[], bool], timeout: float = 30) -> None:
        t0 = time.monotonic()
        while not done():
            assert child.is_alive(), f"{what}: the child exited with {child.exitcode}"
            off_cpu = runqueue_wait(child.pid)
            assert time.monotonic() - t0 - off_cpu < timeout, f"{what}: not within {timeout} s"
            time.sleep(0.05)

    def view() -> str:
        return "the store: " + (store_view() if store_view is not None else "(no view)")

    async def stop() -> None:
        # A call it sent just before ends at the store (a flush moves spend from reserved to
        # committed: the total, its slice, stays). Observed, not slept for: a store still in
        # the stopped child's call holds its slice's row and buckets locked, and expiry skips
        # a locked row.
        for stops in range(1, 51):
            os.kill(child.pid, signal.SIGSTOP)  # type: ignore[arg-type]
            t0 = time.monotonic()
            while settled is not None and not await anyio.to_thread.run_sync(settled):
                if time.monotonic() - t0 > (1 if restop else 30):
                    break
                await anyio.sleep(0.02)
            else:
                out["stops"] = stops
                return
            assert restop, f"a call of the stopped child still open at the store after 30 s: {view()}"
            os.kill(child.pid, signal.SIGCONT)  # type: ignore[arg-type]
            await anyio.sleep(0.05)
        raise AssertionError(f"stopped 50 times, always inside a store call: {view()}")

    async def main() -> None:
        here, sampler = plain(), plain()

        async def sample() -> None:
            while True:
                (u,) = await sampler.usage([HELD])
                total = u.committed + u.reserved
                out["samples"] += 1
                out["peak"] = max(out["peak"], total)
                if total > HELD.limit:
                    out["over"].append((u.committed, u.reserved))
                await anyio.sleep(0.002)

        async def spend_all() -> Decimal:
            spent = Decimal(0)
            for step in (Decimal("0.05"), Decimal("0.01")):
                while True:
                    try:
                        r = await here.reserve([HELD], step, ttl=60, request_id="here")
                    except BudgetExceeded:
                        break
                    await here.settle(r, step, ledger=LedgerRow(
                        "here", 1, "p", "p/m", "ok", cost=step, scopes=("global",)))
                    spent += step
            return spent

        async def usage() -> tuple[Decimal, Decimal]:
            (u,) = await here.usage([HELD])
            return u.committed, u.reserved

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                await stop()
                # Its slice (0.10 spent, 0.05 held, free room) as the store holds it until the
                # lease expires: the last total read while its reservation is still there.
                # Expiry moves the slice from reserved to committed: the total stays.
                t0 = time.monotonic()
                out["slice"] = None
                while time.monotonic() - t0 < STALL_OPTIONS["slice_lease_s"] + 1.0:
                    committed, reserved = await usage()
                    if reserved == 0 and out["slice"] is not None:
                        break  # expired and charged: the last total before is the slice
                    out["held"] = (committed, reserved)
                    out["slice"] = committed + reserved
                    await anyio.sleep(0.02)
                assert out["slice"] is not None and out["slice"] > 0, out
                # Charged at the first expiry past its lease (bounded generously: a loaded
                # machine); no money moves meanwhile.
                t0 = time.monotonic()
                while True:
                    await here.reconcile()  # (or the sampler's read: it expires leases too)
                    out["charged"], reserved = await usage()
                    if (out["charged"], reserved) == (out["slice"], 0) or time.monotonic() - t0 > 90:
                        break
                    await anyio.sleep(0.5)
                assert (out["charged"], reserved) == (out["slice"], 0), (  # charged in full
                    f"its slice ({out['slice']}: committed, reserved {out['held']} before it "
                    f"expired) not charged in full {time.monotonic() - t0:.0f} s later: "
                    f"committed, reserved ({out['charged']}, {reserved}); {out}; {view()}")
                out["spent_while_stopped"] = await spend_all()  # the others use the room left
                assert (u := await usage()) == (HELD.limit, 0), (u, out)
                os.kill(child.pid, signal.SIGCONT)  # type: ignore[arg-type]
                # Its late flush learns that the slice expired; the next says what it holds.
                committed = HELD.limit
                t0 = time.monotonic()
                while committed == HELD.limit:
                    assert child.is_alive(), f"the child exited with {child.exitcode}"
                    off_cpu = runqueue_wait(child.pid)
                    assert time.monotonic() - t0 - off_cpu < 30, "no room came back in 30 s"
                    await anyio.sleep(0.05)
                    committed, _ = await usage()
                out["wake_s"] = time.monotonic() - t0
                assert committed == out["spent_while_stopped"] + Decimal("0.15"), (  # 0.10 + 0.05
                    committed, out, view())
                out["reclaimed"] = HELD.limit - committed
                assert await spend_all() == out["reclaimed"]  # and the others use it
                go.set()
                await anyio.to_thread.run_sync(child.join, 30)
                assert child.exitcode == 0, child.exitcode
                tg.cancel_scope.cancel()
            committed, reserved = await usage()
            rows = await here.rows()
            assert reserved == 0
            assert committed == sum(r.cost for r in rows if r.cost is not None)
            assert committed == HELD.limit - Decimal("0.02"), (committed, out)  # flight: 0.03
            charged = [r for r in rows if r.outcome == "charged"]
            assert charged and sum(r.cost or 0 for r in charged) == 0  # nothing left charged
            assert out["over"] == [], out["over"]
        finally:
            await here.aclose()
            await sampler.aclose()

    try:
        wait_for("the child never got its reservations", ready.is_set)
        anyio.run(main)
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGCONT)  # type: ignore[arg-type]
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
    return out
