"""A streamed attempt whose request left but that got no chunk yet when it was cut (the
deadline, the caller, ``attempt_timeout``, a read timeout, a connection lost after the send),
or whose 200 stream could not be read before its first chunk, is an unanswered attempt: the
server may be generating and bills it, so ``[budget] charge_unanswered`` charges it (usage
``cut``), as it charges a non-streamed one. After the first chunk a stream is charged what it
received, its prompt included. What never reached the server (a refused connection) or was
refused (a 500) costs nothing. Against the faulty server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from squirrel_models import (
    DeadlineExceeded,
    MidStreamError,
    ModelError,
    ModelRequirements,
    ProviderConnectionError,
    ProviderTimeout,
    ServerError,
)
from squirrel_models.ledger import summarize

from ..support.cut import cut_when
from ..support.faulty_server import FaultyServer
from ..support.ports import closed_port
from .test_unanswered import REQUEST, charges, config, spend

pytestmark = pytest.mark.anyio


def only(model: str) -> ModelRequirements:
    return ModelRequirements(models=frozenset({f"up/{model}"}))


async def drain(mm: Any, model: str, timeout: float = 10) -> None:
    async with mm.stream(REQUEST, only(model), timeout=timeout) as s:
        async for _ in s:
            pass


def assert_charged(rows: list[Any], committed: Any, reserved: Any, expected: Any,
                   error_type: str) -> None:
    assert reserved == 0 and committed == expected > 0
    (row,) = rows
    assert (row.outcome, row.error_type, row.cost, row.usage_source) == (
        "error", error_type, expected, "cut")
    assert row.input_tokens > 0
    (group,) = summarize(rows, "model")
    assert group["unreported_tokens"] == row.input_tokens + row.output_tokens


@pytest.mark.parametrize("policy", [None, "prompt", "nothing"])
async def test_a_stream_cut_by_the_deadline_before_its_first_chunk_is_charged(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        policy: str | None) -> None:
    async with squirrel_manager(config(faulty.base_url, policy=policy)) as mm:
        with pytest.raises(DeadlineExceeded) as info:
            await drain(mm, "slow:3", timeout=0.5)
        committed, reserved, rows = await spend(mm)
        expected = charges(mm)[policy or "worst_case"]
    assert faulty.requests == 1
    (rec,) = info.value.attempts
    assert isinstance(rec.error, ProviderTimeout)
    if policy == "nothing":
        assert (committed, reserved) == (0, 0)
        assert [r.usage_source for r in rows] == ["reported"]
        return
    assert_charged(rows, committed, reserved, expected, "ProviderTimeout")
    assert rows[0].output_tokens == (REQUEST.max_tokens if policy is None else 0)
    assert rec.usage is not None and rec.usage.source == "cut"


async def test_a_stream_the_caller_left_before_its_first_chunk_is_charged(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    async with squirrel_manager(config(faulty.base_url)) as mm:
        # Left once the request reached the upstream (which answers in 3 s): after a fixed
        # 0.5 s, a loaded machine could leave it before it was sent, which costs nothing.
        assert await cut_when(lambda: faulty.requests >= 1, lambda: drain(mm, "slow:3"))
        committed, reserved, rows = await spend(mm)
        worst = charges(mm)["worst_case"]
    assert faulty.requests == 1
    (row,) = rows
    assert_charged(rows, committed, reserved, worst, row.error_type)
    assert row.output_tokens == REQUEST.max_tokens


@pytest.mark.parametrize("cut", ["attempt_timeout", "read_timeout"])
async def test_a_stream_timed_out_before_its_first_chunk_is_charged(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        cut: str) -> None:
    cfg = config(faulty.base_url, read_timeout=0.3 if cut == "read_timeout" else 30.0)
    if cut == "attempt_timeout":
        cfg["attempt_timeout"] = 0.3
    async with squirrel_manager(cfg) as mm:
        with pytest.raises(ProviderTimeout) as info:
            await drain(mm, "slow:3")
        committed, reserved, rows = await spend(mm)
        worst = charges(mm)["worst_case"]
    assert info.value.cost == worst and info.value.usage is not None
    assert_charged(rows, committed, reserved, worst, "ProviderTimeout")


@pytest.mark.parametrize("behaviour", ["close", "reset", "malformed-stream"])
async def test_a_stream_lost_or_unreadable_after_the_send_is_charged(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any],
        behaviour: str) -> None:
    """The server read the request, then dropped the connection, or answered 200 with a
    stream whose first event cannot be read."""
    async with squirrel_manager(config(faulty.base_url, model=behaviour)) as mm:
        with pytest.raises(ModelError) as info:
            await drain(mm, behaviour)
        committed, reserved, rows = await spend(mm, behaviour)
        worst = charges(mm, behaviour)["worst_case"]
    assert not isinstance(info.value, MidStreamError)  # no chunk reached the caller
    assert_charged(rows, committed, reserved, worst, type(info.value).__name__)


async def test_a_stream_refused_or_never_connected_costs_nothing(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    async with squirrel_manager(config(faulty.base_url, model="error:500")) as mm:
        with pytest.raises(ServerError):
            await drain(mm, "error:500")
        refused = await spend(mm, "error:500")
    async with squirrel_manager(config(f"http://127.0.0.1:{closed_port()}/v1")) as mm:
        with pytest.raises(ProviderConnectionError) as info:
            await drain(mm, "slow:3")
        unreached = await spend(mm)
    assert info.value.sent is False
    for committed, reserved, rows in (refused, unreached):
        assert (committed, reserved) == (0, 0)
        assert [(r.cost, r.usage_source) for r in rows] == [(0, "reported")]


async def test_a_stream_cut_after_its_first_chunk_is_charged_what_it_received(
        faulty: FaultyServer, canary_env: str, squirrel_manager: Callable[..., Any]) -> None:
    """``hang-stream``: one chunk, then nothing; the deadline cuts it. Its prompt and the
    chunk are charged, never the policy's worst case."""
    async with squirrel_manager(config(faulty.base_url, model="hang-stream")) as mm:
        with pytest.raises(DeadlineExceeded):
            await drain(mm, "hang-stream", timeout=0.8)
        committed, reserved, rows = await spend(mm, "hang-stream")
        worst = charges(mm, "hang-stream")["worst_case"]
    (row,) = rows
    assert row.usage_source != "cut" and row.input_tokens > 0 and row.output_tokens > 0
    assert reserved == 0 and 0 < committed == row.cost < worst
