"""Attack on DESIGN's "Streaming follows the same path", against a real socket upstream on
127.0.0.1 and the openai plugin through a ModelManager with a budget.

Hypothesis draws what model ``a`` streams: content, empty and tool-call deltas, a second
choice, a usage event that is missing, true, lying low or far above what was allowed,
``[DONE]`` or not, an error event, a connection closed or reset at any byte, the bytes split
into writes at any point. Model ``b`` answers normally. Whatever ``a`` does:

- nothing of ``a`` reached the caller: the answer is ``b``'s, as if ``a`` never was;
- something did: ``b`` is never called, and the stream either ends or raises one
  :class:`MidStreamError` whose partial text is what the caller read;
- what ``a`` is charged is its ledger row and the budget's spend, within its reservation
  unless ``a`` reported more (then that is charged and counted in ``squirrel.budget.overspend``);
- no reservation stays open.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, MidStreamError, ModelRequirements, SquirrelError

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=20)


class DripServer:
    """An upstream that answers each chat request with the next scripted plan: a 200 event
    stream sent as the given byte pieces (each written apart, after an optional pause), then
    the connection closed, or reset (``reset``)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.plans: dict[str, deque[tuple[list[bytes], float, bool]]] = {}
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def plan(self, model: str, pieces: list[bytes], pause: float = 0.0, reset: bool = False) -> None:
        with self.lock:
            self.plans.setdefault(model, deque()).append((pieces, pause, reset))

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(body) < length:
                body += conn.recv(65536)
            model = json.loads(body).get("model", "")
            with self.lock:
                self.calls[model] = self.calls.get(model, 0) + 1
                q = self.plans.get(model)
                pieces, pause, reset = q.popleft() if q else ([_events(["ok"], done=True)], 0.0, False)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Connection: close\r\n\r\n")
            try:
                for p in pieces:
                    if pause:
                        time.sleep(pause)
                    conn.sendall(p)
                if reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def _chunk(delta: dict[str, Any], index: int = 0, finish: str | None = None,
           usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "chat.completion.chunk", "model": "m",
                           "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


def _events(parts: list[Any], done: bool) -> bytes:
    out = []
    for p in parts:
        event = _chunk({"content": p}) if isinstance(p, str) else p
        out.append(b"data: " + json.dumps(event).encode() + b"\n\n")
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
DELTA = st.one_of(
    TEXT.map(lambda t: _chunk({"content": t})),
    st.just(_chunk({})),  # an empty delta
    st.just(_chunk({"role": "assistant", "content": None})),
    st.sampled_from([_chunk({"tool_calls": [{"index": 0, "id": "t1", "type": "function",
                                             "function": {"name": "f", "arguments": ""}}]}),
                     _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]})]),
    TEXT.map(lambda t: _chunk({"content": t}, index=1)),  # a second choice nobody asked for
    st.just({"error": {"message": "upstream overloaded", "type": "server_error"}}),
    st.text(max_size=20).map(lambda t: _chunk({"content": t * 500})),  # a giant chunk
)
#: None: no usage event; else (prompt, completion) as the upstream reports them.
USAGE = st.one_of(st.none(), st.tuples(st.sampled_from([0, 1, 9, 10_000_000]),
                                       st.sampled_from([0, 1, 5, 20, 21, 5_000_000])))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    events: list[Any] = draw(st.lists(DELTA, max_size=6))
    usage = draw(USAGE)
    if usage is not None:
        p, c = usage
        events.append(_chunk({}, finish="stop", usage={"prompt_tokens": p, "completion_tokens": c,
                                                        "total_tokens": p + c}) | {"choices": []})
    body = _events(events, done=draw(st.booleans()))
    cut = draw(st.one_of(st.none(), st.integers(0, len(body))))
    if cut is not None:
        body = body[:cut]
    splits = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    pieces = [body[i:j] for i, j in zip([0, *splits], [*splits, len(body)], strict=True) if j > i]
    return pieces, draw(st.booleans())


@pytest.fixture(scope="module")
def drip() -> Any:
    server = DripServer()
    yield server
    server.close()


def _config(drip: DripServer) -> dict[str, Any]:
    return {"providers": [{"name": "up", "type": "openai", "discover": False,
                           "options": {"base_url": drip.base_url, "api_key_env": None,
                                       "timeout": 5},
                           "models": [{"name": "a", "price": {"input": "1", "output": "2"}},
                                      {"name": "b", "price": {"input": "3", "output": "4"}}]}],
            "budget": {"limits": [{"scope": "global", "limit": "1000"}]},
            "fallback": {"strategies": ["next_candidate"], "max_attempts": 2}, "timeout": 10}


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=streams())
async def test_any_stream_keeps_the_promises(squirrel_manager, squirrel_metrics, drip, plan) -> None:
    pieces, reset = plan
    drip.calls.clear()
    drip.plan("a", pieces, reset=reset)
    drip.plan("b", [_events(["fallback ", "answer"], done=True)])
    read: list[str] = []
    error: BaseException | None = None
    over_before = squirrel_metrics.total("squirrel.budget.overspend")  # one reader for all examples
    async with squirrel_manager(_config(drip)) as mm:
        req = ModelRequirements(models=["up/a", "up/b"])
        try:
            async with mm.stream(REQUEST, req) as s:
                async for chunk in s:
                    read.append(chunk.text)
            response = s.response
        except MidStreamError as exc:
            error, response = exc, None
        except SquirrelError as exc:  # a failed before its first chunk and b too: not here
            raise AssertionError(f"b answers normally: {exc!r}") from exc
        rows = await mm.budget_backend.rows()
        (spent,) = await mm.tokens.check_budget(mm.models["up/a"])
        reserved_a = mm.tokens.estimate(REQUEST, mm.models["up/a"]).worst_case_cost
        assert mm.budget_backend.open_reservations == 0
    drip.plans.clear()
    calls = dict(drip.calls)
    text = "".join(read)
    rows_a = [r for r in rows if r.model == "up/a"]
    assert len(rows_a) == 1 and calls.get("a") == 1
    if response is not None and response.model == "up/b":
        # a failed before anything reached the caller: invisible.
        assert text == "fallback answer" and rows_a[0].outcome == "error"
        assert calls.get("b") == 1
    else:
        assert calls.get("b") is None  # never replayed once a chunk was out
        if error is not None:
            assert error.partial_text == text
            assert rows_a[0].outcome == "error"
    # The budget's spend is the ledger's, and a's charge stays within its reservation
    # unless a reported more (then it is charged and counted as overspend).
    assert spent.reserved == 0
    assert spent.committed == sum((r.cost for r in rows if r.cost is not None), Decimal(0))
    cost_a = rows_a[0].cost
    assert cost_a is not None and reserved_a is not None
    over = squirrel_metrics.total("squirrel.budget.overspend") - over_before
    if cost_a > reserved_a:
        assert rows_a[0].usage_source == "reported"
        assert over == pytest.approx(float(cost_a - reserved_a))
    else:
        assert over == 0
