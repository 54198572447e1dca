"""The fallback chain attacked over real HTTP: a ``ModelManager`` configured as a user would
(openai providers, one per server) over a chain of 2-4 misbehaving servers on 127.0.0.1 whose
answer to each request hypothesis draws (every status a provider sends, 429s with every form
of ``Retry-After``, resets, hangs, bad bodies, broken streams), several requests per manager
so circuit breakers and held models carry from one to the next, completions and streams.

For each request, counted at the servers: at most ``max_attempts`` upstream calls; every call
recorded in the request's attempts (``on_request_finished``) and in the ledger; an answer that cannot succeed
(400, 401, 403, 404, 422) never sent to the same model again in the request, and after a 400
or a 422 (the request is wrong) no other model tried; never past the deadline (plus the
cleanup bound and the time the machine kept the loop off the CPU); success or a
``SquirrelError``, nothing else."""

from __future__ import annotations

import email.utils
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import (
    AIRequest,
    DeadlineExceeded,
    ModelManager,
    PluginError,
    SquirrelError,
    SyncModelManager,
    hookimpl,
)
from squirrel_models.plugins import PluginManager

from ..support.budget_workers import complete_or_stream
from ..support.faulty_server import FaultyServer
from ..support.stalls import loop_stalls
from .conftest import CANARY_ENV

TIMEOUT = 1.0
#: The cleanup bound after the deadline (``CLEANUP_GRACE``) plus what a busy machine adds to a
#: cut (timer redelivery, a stream's close): generous, and far below a missed cut (seconds).
LATE = 0.25 + 0.75
HOPELESS = {"error:400", "error:401", "error:403", "error:404", "error:422", "auth"}
WRONG_REQUEST = {"error:400", "error:422"}


def _http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


#: Raw answers (status, headers, body) the behaviours name: ``Retry-After`` in every form.
RAW: dict[str, tuple[int, dict[str, str], bytes]] = {
    **{f"429 retry-after {v}": (429, {"Retry-After": v}, b'{"error": {"message": "slow down"}}')
       for v in ("0.05", "-5", "garbage", "1e9", "nan", "3600", "")},
    "429 retry-after date+1h": (429, {"Retry-After": _http_date(3600)}, b"{}"),
    "429 retry-after date-1h": (429, {"Retry-After": _http_date(-3600)}, b"{}"),
    "429 no retry-after": (429, {}, b'{"error": {"message": "slow down", "type": "requests"}}'),
    "200 error body": (200, {}, b'{"error": {"message": "upstream failed", "type": "server_error"}}'),
    "200 empty choices": (200, {}, json.dumps({"id": "x", "object": "chat.completion", "model": "ok",
                                               "choices": []}).encode()),
    "200 other model": (200, {}, json.dumps({
        "id": "x", "object": "chat.completion", "model": "someone-else",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()),
}
BEHAVIOURS = ["error:400", "error:401", "error:403", "error:404", "error:422", "error:408",
              "error:409", "error:500", "error:502", "error:503", "error:529", "rate-limit:0.05",
              "rate-reset:3600", "quota", "reset", "close", "hang", "malformed", "no-choices", "truncate",
              "reset-stream", "stream-error", "malformed-stream", "hang-stream", "context", "auth", *RAW]

REQUEST = AIRequest.from_prompt("hello there", max_tokens=8)


class _Finished:
    """Every request's attempts, as observers see them."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, ...]] = []

    @hookimpl
    def on_request_finished(self, event: Any) -> None:
        self.attempts.append(event.attempts)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[FaultyServer]]:
    started = [FaultyServer().start() for _ in range(4)]
    try:
        yield started
    finally:
        for s in started:
            s.stop()


def _reset(servers: list[FaultyServer]) -> None:
    for s in servers:
        s._scripts.clear()
        s._raw.clear()
        s.reset_counters()


def _queue(server: FaultyServer, behaviours: list[str]) -> None:
    for b in behaviours:
        if b in RAW:
            status, headers, body = RAW[b]
            server.serve("ok", body, status=status, headers=headers)
        else:
            server.script("ok", b)


def _played(server: FaultyServer, raw_names: dict[str, str], since: int) -> list[str]:
    return [raw_names.get(b, b) for b in server.behaviours[since:]]


def _config(servers: list[FaultyServer], max_attempts: int, threshold: int) -> dict[str, Any]:
    return {
        "providers": [{"name": f"s{i}", "type": "openai", "discover": False,
                       "options": {"base_url": s.base_url, "api_key_env": CANARY_ENV, "timeout": 0.3},
                       "models": [{"name": "ok", "price": {"input": str(i + 1), "output": str(i + 1)},
                                   "features": ["streaming", "system_prompt"]}]}
                      for i, s in enumerate(servers)],
        "fallback": {"max_attempts": max_attempts, "options": {"retry": {"base_delay": 0.01}}},
        "circuit_breaker": {"failure_threshold": threshold, "base_cooldown": 0.05, "max_cooldown": 5.0},
        "timeout": TIMEOUT,
    }


async def _one(manager: ModelManager, streamed: bool) -> BaseException | None:
    try:
        await complete_or_stream(manager, REQUEST, stream=streamed)
    except SquirrelError as exc:
        return exc
    return None


async def _run(servers: list[FaultyServer], scripts: list[list[str]], max_attempts: int,
               threshold: int, streams: list[bool]) -> None:
    finished = _Finished()
    plugins = PluginManager()
    plugins.register(finished, "finished")
    raw_names: dict[str, str] = {}
    for server, script in zip(servers, scripts, strict=False):
        for b in script:
            _queue(server, [b])
            step = server._scripts["ok"][-1]
            if step.startswith("raw:"):
                raw_names[step] = b
    chain = servers[:len(scripts)]
    async with ModelManager(_config(chain, max_attempts, threshold), plugins=plugins) as manager:
        for n, streamed in enumerate(streams):
            before = [len(s.behaviours) for s in chain]
            async with loop_stalls() as stalls:
                t0 = time.monotonic()
                error = await _one(manager, streamed)
                took = stalls.elapsed(t0)
            played = [_played(s, raw_names, b) for s, b in zip(chain, before, strict=True)]
            calls = sum(len(p) for p in played)
            where = f"request {n} ({'stream' if streamed else 'complete'}): played {played}, error {error!r}"
            assert not isinstance(error, PluginError), where
            assert calls <= max_attempts, where
            assert took < TIMEOUT + LATE, (took, where)
            (attempts,) = finished.attempts[n:n + 1] or [()]
            upstream = [a for a in attempts if a.outcome in ("ok", "error")]
            assert len(upstream) <= max_attempts, where
            # Every call a server saw is among the request's attempts that may have left,
            # model by model, and (unless the deadline cut one) each of those reached it. An
            # attempt whose error says it provably never left (sent False: its connection was
            # never made, as when connecting outlasted the 0.3 s timeout on a loaded machine)
            # is not expected at the server, and must not be there.
            left = Counter(a.model_id for a in upstream if getattr(a.error, "sent", None) is not False)
            for i, p in enumerate(played):
                assert len(p) <= left[f"s{i}/ok"], (attempts, where)
                if not isinstance(error, DeadlineExceeded):
                    assert len(p) == left[f"s{i}/ok"], (attempts, where)
            # In call order, what each call was answered with.
            queues = [list(p) for p in played]
            sequence = [(a.model_id, queues[int(a.model_id[1])].pop(0) if queues[int(a.model_id[1])] else "?")
                        for a in upstream]
            for k, (model, answer) in enumerate(sequence):
                later = [m for m, _ in sequence[k + 1:]]
                if answer in HOPELESS:
                    assert model not in later, (sequence, where)
                if answer in WRONG_REQUEST:
                    assert not later, (sequence, where)
            if error is None:
                assert attempts and attempts[-1].outcome == "ok", where
        # The ledger holds a row for every attempt made, upstream calls and refusals alike.
        rows = await manager.budget_backend.rows()
        made = Counter((a.model_id, a.outcome) for done in finished.attempts for a in done
                       if a.outcome in ("ok", "error"))
        assert Counter((r.model, r.outcome) for r in rows if r.outcome in ("ok", "error")) == made


#: What a model answers, request after request (then ``ok``).
SCRIPT = st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=5)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scripts=st.lists(SCRIPT, min_size=2, max_size=4), max_attempts=st.integers(1, 5),
       threshold=st.integers(1, 3), streams=st.lists(st.booleans(), min_size=1, max_size=3))
def test_the_chain_keeps_its_bounds_over_real_servers(servers: list[FaultyServer], canary_env: str,
                                                      backend: str, scripts: list[list[str]],
                                                      max_attempts: int, threshold: int,
                                                      streams: list[bool]) -> None:
    _reset(servers)
    anyio.run(_run, servers, scripts, max_attempts, threshold, streams, backend=backend)


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("chain", [1, 2])
async def test_a_409_is_retried_or_falls_back(servers: list[FaultyServer], canary_env: str, streamed: bool,
                                              chain: int) -> None:
    """A 409 (a conflict: OpenAI's lock timeout, retried by OpenAI's and Anthropic's own SDKs)
    was an InvalidRequestError: the request ended at once, no retry and no other model tried."""
    _reset(servers)
    servers[0].script("ok", "error:409")
    async with ModelManager(_config(servers[:chain], 3, 3)) as manager:
        if streamed:
            async with manager.stream(REQUEST) as s:
                text = "".join([c.text async for c in s])
            response = s.response
            assert response is not None
        else:
            response = await manager.complete(REQUEST)
            text = response.text
    assert text
    assert [a.model_id for a in response.attempts] == ["s0/ok", "s0/ok" if chain == 1 else "s1/ok"]
    assert sum(s.requests for s in servers) == 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scripts=st.lists(SCRIPT, min_size=2, max_size=3), max_attempts=st.integers(1, 4),
       streamed=st.booleans())
def test_the_sync_api_keeps_the_same_bounds(servers: list[FaultyServer], canary_env: str, backend: str,
                                            scripts: list[list[str]], max_attempts: int, streamed: bool) -> None:
    """The same chain through ``SyncModelManager`` (its own loop in a thread): at most
    ``max_attempts`` calls, within the deadline, success or a ``SquirrelError``."""
    _reset(servers)
    for server, script in zip(servers, scripts, strict=False):
        _queue(server, script)
    chain = servers[:len(scripts)]
    with SyncModelManager(_config(chain, max_attempts, 3), backend=backend) as manager:
        t0 = time.monotonic()
        error: SquirrelError | None = None
        try:
            if streamed:
                with manager.stream(REQUEST) as s:
                    for _ in s:
                        pass
            else:
                manager.complete(REQUEST)
        except SquirrelError as exc:
            error = exc
        took = time.monotonic() - t0
    assert not isinstance(error, PluginError), error
    assert sum(s.requests for s in chain) <= max_attempts
    # No loop to measure stalls on here: a bound far above the deadline, far below a missed cut.
    assert took < TIMEOUT + 3.0, took
