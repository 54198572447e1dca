"""A call cut (by its deadline or its caller) while it still waits for a connection in the
provider's pool, or while its new connection is being made, never left: it costs nothing,
where a call cut after its request left is charged what ``[budget] charge_unanswered`` says.
Against the faulty server on 127.0.0.1, with a pool of one connection held by a slow answer,
and on a port whose connections are never made (a full accept queue: the client's connect
waits); each engine (aiohttp below its session and through it, httpx), answers and streams.
Committed spend equals the ledger's costs, and the cost metric is the ledger's."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import pytest
from squirrel_models import DeadlineExceeded

from ..support.faulty_server import FaultyServer
from ..support.ports import connect_hangs
from .test_unanswered import NEED, REQUEST, charges, config, spend

pytestmark = pytest.mark.anyio


async def _call(mm: Any, streamed: bool, timeout: float) -> None:
    if streamed:
        async with mm.stream(REQUEST, NEED, timeout=timeout) as s:
            async for _ in s:
                pass
    else:
        await mm.complete(REQUEST, NEED, timeout=timeout)


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("cut", ["deadline", "caller"])
async def test_a_call_cut_while_it_waits_for_a_connection_costs_nothing(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        squirrel_metrics: Any, transport: str, cut: str, streamed: bool) -> None:
    cfg = config(faulty.base_url)
    cfg["providers"][0]["options"].update(max_connections=1, transport=transport)
    async with squirrel_manager(cfg) as mm:
        async with anyio.create_task_group() as tg:
            # The first call holds the pool's one connection: the server answers in 3 s.
            tg.start_soon(partial(_call, mm, streamed, 10))
            with anyio.fail_after(5):
                while faulty.requests < 1:
                    await anyio.sleep(0.01)
            if cut == "deadline":
                with pytest.raises(DeadlineExceeded):
                    await _call(mm, streamed, 0.3)
            else:
                with anyio.move_on_after(0.3) as scope:
                    await _call(mm, streamed, 10)
                assert scope.cancelled_caught
            assert faulty.requests == 1  # the second call never reached the server
            tg.cancel_scope.cancel()  # the first, cut after its request left
        committed, reserved, rows = await spend(mm)
        worst = charges(mm)["worst_case"]
    assert reserved == 0 and committed == worst > 0  # the first call's charge only
    first = rows[-1]  # cancelled last
    assert (first.usage_source, first.cost) == ("cut", worst)
    if cut == "deadline":  # recorded as the timeout it is, at no cost
        (second,) = rows[:-1]
        assert (second.error_type, second.usage_source, second.cost) == ("ProviderTimeout", "reported", 0)
        assert (second.input_tokens, second.output_tokens) == (0, 0)
    else:  # the caller left a call that cost nothing: nothing to record
        assert len(rows) == 1
    assert Decimal(str(squirrel_metrics.total("squirrel.request.cost"))) == committed


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("cut", ["deadline", "caller"])
async def test_a_call_cut_while_its_connection_is_made_costs_nothing(
        canary_env: str, squirrel_manager: Callable[..., Any], squirrel_metrics: Any,
        transport: str, cut: str, streamed: bool) -> None:
    """httpx's engine charged it as sent (only its wait for admission was marked); under
    trio the cut came out of httpcore's connect in an exception group, and the attempt went
    unrecorded. The cut comes 2.5 s in: the first attempt of a process starts after about
    0.5 s (its token counting's set-up), longer on a loaded machine."""
    with connect_hangs() as port:
        cfg = config(f"http://127.0.0.1:{port}/v1")
        cfg["providers"][0]["options"].update(transport=transport, connect_timeout=30)
        async with squirrel_manager(cfg) as mm:
            if cut == "deadline":
                with pytest.raises(DeadlineExceeded):
                    await _call(mm, streamed, 2.5)
            else:
                with anyio.move_on_after(2.5) as scope:
                    await _call(mm, streamed, 10)
                assert scope.cancelled_caught
            committed, reserved, rows = await spend(mm)
    assert (committed, reserved) == (0, 0)
    if cut == "deadline":
        (row,) = rows
        assert (row.error_type, row.usage_source, row.cost) == ("ProviderTimeout", "reported", 0)
        assert (row.input_tokens, row.output_tokens) == (0, 0)
    else:
        assert rows == []
    assert squirrel_metrics.total("squirrel.request.cost") == 0
