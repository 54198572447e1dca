"""A call cut (by its deadline or its caller) while huggingface_hub's client still makes its
connection never left: it costs nothing, and a deadline's cut is recorded as the timeout it is.
On a port whose connections are never made (a full accept queue: the client's connect waits),
answers and streams, asyncio and trio.

Before: under asyncio it was charged its worst case (usage ``cut``), as a request that may
have left; under trio the cancellation came out of httpcore2's connect (trio's
``open_tcp_stream`` runs in a nursery) in an exception group the core did not take for a
cancellation, and the attempt went unrecorded ("0 attempt(s) made")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, DeadlineExceeded, ModelRequirements

from ..support.ports import connect_hangs
from .conftest import CANARY_ENV

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("what does a squirrel keep for winter?", max_tokens=40)
NEED = ModelRequirements(models=frozenset({"up/m"}))
#: After the first attempt of a process has started (its set-up takes about 0.5 s, longer
#: on a loaded machine), while its connect still waits.
CUT_S = 2.5


async def _call(mm: Any, streamed: bool, timeout: float) -> None:
    if streamed:
        async with mm.stream(REQUEST, NEED, timeout=timeout) as s:
            async for _ in s:
                pass
    else:
        await mm.complete(REQUEST, NEED, timeout=timeout)


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("cut", ["deadline", "caller"])
async def test_a_call_cut_while_its_connection_is_made_costs_nothing(
        canary_env: str, squirrel_manager: Callable[..., Any], cut: str, streamed: bool) -> None:
    with connect_hangs() as port:
        cfg = {"providers": [{"name": "up", "type": "huggingface", "discover": False,
                              "options": {"base_url": f"http://127.0.0.1:{port}/v1", "token_env": CANARY_ENV,
                                          "timeout": 30},
                              "models": [{"name": "m", "price": {"input": "1000", "output": "3000"}}]}],
               "fallback": {"max_attempts": 1},
               "budget": {"limits": [{"scope": "global", "limit": "1000"}]}}
        async with squirrel_manager(cfg) as mm:
            if cut == "deadline":
                with pytest.raises(DeadlineExceeded) as info:
                    await _call(mm, streamed, CUT_S)
                assert len(info.value.attempts) == 1
            else:
                with anyio.move_on_after(CUT_S) as scope:
                    await _call(mm, streamed, 10)
                assert scope.cancelled_caught
            (u,) = await mm.tokens.check_budget(mm.models["up/m"])
            rows = await mm.budget_backend.rows()
    assert (u.committed, u.reserved) == (0, 0)
    if cut == "deadline":
        (row,) = rows
        assert (row.error_type, row.usage_source, row.cost) == ("ProviderTimeout", "reported", 0)
    else:
        assert rows == []
