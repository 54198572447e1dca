"""The gateway with the official OpenAI SDK as the client, routing to the faulty server:
tools, errors in OpenAI's JSON with the status a client expects, virtual keys, budgets under
concurrent clients, client disconnects and graceful shutdown."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest
from squirrel_models_gateway import GatewayThread

from ..support import secret_scanner
from ..support.faulty_server import ANSWER, TOOL_ARGUMENTS, FaultyServer
from .conftest import OTHER_KEY, REVOKED_KEY, TEAM_KEY, UPSTREAM_KEY, budget_state, faulty_config, gateway, request_head

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
HI = [{"role": "user", "content": "Hi"}]


def client(openai: Any, base_url: str, key: str = TEAM_KEY) -> Any:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)


def test_plain_answer_headers_and_usage(openai_module: Any, faulty: FaultyServer, canary_env: str,
                                         faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    c = client(openai_module, gw.base_url)
    raw = c.chat.completions.with_raw_response.create(model="faulty/ok", messages=HI, max_tokens=32)
    resp = raw.parse()
    assert resp.choices[0].message.content == ANSWER
    assert resp.model == "faulty/ok" and resp.object == "chat.completion"
    assert resp.usage is not None and resp.usage.prompt_tokens > 0
    assert raw.headers["x-squirrel-model"] == "faulty/ok"
    assert Decimal(raw.headers["x-squirrel-cost"]) > 0
    assert "score" in raw.headers["x-squirrel-reason"]
    assert raw.headers["x-squirrel-attempts"] == "1"
    assert resp.id == f"chatcmpl-{raw.headers['x-request-id']}"
    # the alias, and auto
    assert c.chat.completions.create(model="cheap", messages=HI, max_tokens=8).model == "faulty/ok"
    r = c.chat.completions.with_raw_response.create(model="auto", messages=HI, max_tokens=8)
    assert r.headers["x-squirrel-model"].startswith("faulty/")


def test_tools_plain_and_streamed(openai_module: Any, faulty: FaultyServer, canary_env: str,
                                         faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    c = client(openai_module, gw.base_url)
    resp = c.chat.completions.create(model="faulty/tool-call", messages=HI, tools=[WEATHER],
                                     tool_choice="auto", max_tokens=32)
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.function.arguments == TOOL_ARGUMENTS
    assert faulty.payloads_seen[-1]["tools"] == [WEATHER]
    # the answer goes back as the next turn, in the SDK's own shapes
    follow = [*HI, resp.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "18C"}]
    assert c.chat.completions.create(model="faulty/ok", messages=follow, max_tokens=8).choices
    stream = c.chat.completions.create(model="faulty/tool-call", messages=HI, tools=[WEATHER],
                                       max_tokens=32, stream=True)
    pieces: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or ():
                p = pieces.setdefault(d.index, {"id": "", "name": "", "args": ""})
                p["id"] = p["id"] or (d.id or "")
                p["name"] = p["name"] or (d.function.name or "")
                p["args"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    assert pieces[0]["name"] == "get_weather" and pieces[0]["args"] == TOOL_ARGUMENTS
    assert finish == "tool_calls"
    # auto with tools goes to a model that has the tools feature
    r = c.chat.completions.with_raw_response.create(model="auto", messages=HI, tools=[WEATHER], max_tokens=8)
    assert r.headers["x-squirrel-model"].startswith("faulty/")


def test_request_needs_choose_the_model(openai_module: Any, faulty: FaultyServer, canary_env: str,
                                         faulty_gw: GatewayThread) -> None:
    """Images need a vision model, a JSON response format a model with JSON mode: auto finds
    the one that has them, a model named by id that lacks them is refused with a 400."""
    c = client(openai_module, faulty_gw.base_url)
    image = [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                          {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    r = c.chat.completions.with_raw_response.create(model="auto", messages=image, max_tokens=8)
    assert r.headers["x-squirrel-model"] == "faulty/ok"
    sent = faulty.payloads_seen[-1]["messages"][0]["content"]
    assert sent[1]["image_url"]["url"] == "https://example.com/a.png"
    r = c.chat.completions.with_raw_response.create(model="auto", messages=HI, max_tokens=8,
                                                    response_format={"type": "json_object"}, seed=3, top_p=0.5)
    assert r.headers["x-squirrel-model"] == "faulty/ok"
    with pytest.raises(openai_module.BadRequestError) as info:
        c.chat.completions.create(model="faulty/tool-call", messages=image, max_tokens=8)
    assert info.value.response.json()["error"]["code"] == "no_model_available"
    assert "vision" in info.value.response.json()["error"]["message"]


def test_a_request_no_model_takes_is_not_retried_by_the_sdk(openai_module: Any, faulty: FaultyServer,
                                                            canary_env: str, faulty_gw: GatewayThread) -> None:
    """n=2 to a server that does not take n: the upstream answers once (billed), so the model
    cannot take the request as sent. It was a 502, which the SDK retries twice by default:
    three upstream calls, each refused the same way and each charged to the key."""
    c = openai_module.OpenAI(base_url=faulty_gw.base_url, api_key=TEAM_KEY, timeout=20)  # max_retries=2
    before_requests = faulty.requests
    before, _, _ = budget_state(faulty_gw, "team-a")
    with pytest.raises(openai_module.BadRequestError) as info:
        c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8, n=2)
    assert info.value.response.json()["error"]["code"] == "upstream_rejected"
    assert "n=2" in info.value.response.json()["error"]["message"]
    assert faulty.requests - before_requests == 1
    after, reserved, _ = budget_state(faulty_gw, "team-a")
    assert after - before > 0 and reserved == 0  # the one answer is charged, once


#: The SDK's timeouts, tried in turn until one of its tries reaches the upstream before the SDK
#: gives up: at 0.1 s alone, all three tries were cut before the gateway had sent them on when
#: the machine was loaded (upstream_calls 0; each such try rightly costs nothing).
SDK_TIMEOUTS = (0.1, 0.5, 1.5)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_every_upstream_call_an_sdk_timeout_left_is_charged(openai_module: Any, faulty: FaultyServer,
                                                             canary_env: str, faulty_gw: GatewayThread,
                                                             stream: bool) -> None:
    """The SDK gives up on an upstream that has not answered yet, and retries twice (its
    default): each try that reached the upstream was answered (and billed) after the client
    left. Each was charged $0 once; now each is charged its worst case, and the ledger says it
    is an estimate (``cut``). The same with ``stream=True``: the SDK gives up before the
    upstream's first chunk, and each try, once charged $0 as a stream that received nothing,
    is charged its worst case too. The upstream never answers (``hang``, until the gateway
    cuts its call), so no try can beat the SDK's timeout however the machine schedules the
    threads; the timeout only decides whether a try gets as far as the upstream, and the
    test goes on to a longer one until some try did (the charges are checked every time)."""
    mm = faulty_gw.app.state.gateway.manager
    for timeout in SDK_TIMEOUTS:
        c = openai_module.OpenAI(base_url=faulty_gw.base_url, api_key=TEAM_KEY, timeout=timeout)  # max_retries=2
        before_requests = faulty.requests
        before, _, _ = budget_state(faulty_gw, "team-a")
        started = time.time()
        with pytest.raises(openai_module.APITimeoutError):
            answer = c.chat.completions.create(model="faulty/hang", messages=HI, max_tokens=8, stream=stream)
            for _ in answer if stream else ():
                pass
        end = time.monotonic() + 30
        while faulty_gw.app.state.gateway.in_flight and time.monotonic() < end:
            time.sleep(0.02)
        after, reserved, open_ = budget_state(faulty_gw, "team-a")
        rows = [r for r in anyio.run(mm.budget_backend.rows)
                if r.model == "faulty/hang" and r.at.timestamp() >= started]
        upstream_calls = faulty.requests - before_requests
        assert upstream_calls <= 3 and reserved == 0 and open_ == 0, (timeout, upstream_calls, reserved, open_)
        # Every try that may have reached the upstream is charged (one cut after its request
        # was sent, answered or not), each its worst case: the prompt and the 8 tokens asked
        # for, at $0.001 a token. Only a try cut while it still waited for a connection costs
        # nothing.
        assert upstream_calls <= len(rows) <= 3 and {r.usage_source for r in rows} <= {"cut"}, (timeout, rows)
        assert all(r.output_tokens == 8 and r.cost == Decimal("0.001") * (r.input_tokens + 8) for r in rows)
        assert after - before == sum(r.cost for r in rows), (timeout, after - before, rows)
        if upstream_calls:
            assert after - before > 0
            return
    pytest.fail(f"no try of the SDK reached the upstream, even with a {SDK_TIMEOUTS[-1]} s timeout")


def test_stream_with_usage(openai_module: Any, faulty: FaultyServer, canary_env: str,
                                         faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    c = client(openai_module, gw.base_url)
    chunks = list(c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=32, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    # without include_usage: no usage chunk
    chunks = list(c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=32, stream=True))
    assert all(ch.usage is None for ch in chunks) and chunks[-1].choices[0].finish_reason == "stop"


STATUS = [("faulty/error:500", 502, "upstream_failed"), ("faulty/hang", 504, "deadline_exceeded"),
          ("faulty/rate-limit:1", 429, "upstream_rate_limited"), ("faulty/context", 400, "context_length_exceeded"),
          ("faulty/leak:message.whole", 400, "upstream_rejected"), ("faulty/nope", 404, "model_not_found")]


@pytest.mark.parametrize(("model", "status", "code"), STATUS, ids=[m for m, _, _ in STATUS])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_errors_in_openai_json(openai_module: Any, faulty: FaultyServer, canary_env: str, model: str,
                               status: int, code: str, stream: bool, faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    c = client(openai_module, gw.base_url)
    with pytest.raises(openai_module.APIStatusError) as info:
        c.chat.completions.create(model=model, messages=HI, max_tokens=8, stream=stream)
    err = info.value
    assert err.status_code == status, err.response.text
    body = err.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    secret_scanner.collect(err.response.text, str(err), json.dumps(dict(err.response.headers)))
    assert UPSTREAM_KEY not in err.response.text


BAD = [({"max_tokens": "ten"}, "max_tokens"), ({"temperature": 9}, "temperature"),
       ({"frobnicate": 1}, "frobnicate"), ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
       ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
       ({"stream_options": {"include_usage": True}}, "stream_options"),
       ({"model": None}, "model")]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_input_is_a_400_naming_the_field(faulty: FaultyServer, canary_env: str, change: dict[str, Any],
                                             field: str, faulty_gw: GatewayThread) -> None:
    body = {"model": "faulty/ok", "messages": HI, **change}
    gw = faulty_gw
    r = httpx.post(gw.base_url + "/chat/completions", json={k: v for k, v in body.items() if v is not None},
                   headers={"Authorization": f"Bearer {TEAM_KEY}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["type"] == "invalid_request_error"
    assert field.split("[")[0] in err["message"]


def test_unknown_paths_and_methods_in_openai_json(faulty_gw: GatewayThread) -> None:
    root = faulty_gw.base_url.removesuffix("/v1")
    for method, path, status in (("GET", "/v1/chat/completions", 405), ("POST", "/v1/completions", 404),
                                 ("GET", "/v2/models", 404)):
        r = httpx.request(method, root + path, headers={"Authorization": f"Bearer {TEAM_KEY}"})
        assert r.status_code == status
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_bodies_that_are_not_json(faulty: FaultyServer, canary_env: str) -> None:
    with gateway(faulty_config(faulty, max_body_bytes=1000)) as gw:
        auth = {"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"}
        for content in (b"{not json", b"[1, 2]", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000):
            r = httpx.post(gw.base_url + "/chat/completions", content=content, headers=auth)
            assert r.status_code in (400, 413) and "error" in r.json(), content[:10]
        r = httpx.post(gw.base_url + "/chat/completions", content=b"x" * 2000, headers=auth)
        assert r.status_code == 413


def test_an_open_gateway_without_keys_serves_the_openai_sdk(openai_module: Any, faulty: FaultyServer,
                                                            canary_env: str) -> None:
    """allow_anonymous and no keys: the official SDK always sends a key (it refuses to start
    without one: api_key="" raised OpenAIError), so every request was a 401 invalid_api_key and
    the SDK could not use such a gateway at all. With keys configured a wrong key stays a 401."""
    with gateway(faulty_config(faulty, keys=[], allow_anonymous=True, anonymous_budget_key="team-a")) as gw:
        for key in ("unused", "sk-no-key-required"):
            with client(openai_module, gw.base_url, key) as c:
                assert c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8).model == "faulty/ok"
                assert "faulty/ok" in [m.id for m in c.models.list()]
    with gateway(faulty_config(faulty, allow_anonymous=True, anonymous_budget_key="team-a")) as gw:
        with client(openai_module, gw.base_url, "unused") as c, \
                pytest.raises(openai_module.AuthenticationError) as info:
            c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8)
        assert info.value.response.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(gw.base_url + "/chat/completions", json={"model": "faulty/ok", "messages": HI,
                                                                "max_tokens": 8})
        assert r.status_code == 200, r.text


def test_virtual_keys(openai_module: Any, faulty: FaultyServer, canary_env: str,
                                         faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    for key in ("sqk-unknown-key-123456", REVOKED_KEY, TEAM_KEY[:-1], ""):
        c = client(openai_module, gw.base_url, key or "x")
        with pytest.raises(openai_module.AuthenticationError) as info:
            c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8)
        assert info.value.status_code == 401
        assert info.value.response.json()["error"]["code"] == "invalid_api_key"
        secret_scanner.collect(info.value.response.text)
        with pytest.raises(openai_module.AuthenticationError):
            c.models.list()
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "faulty/ok", "messages": HI})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    # team-b may use faulty/ok and the alias cheap, nothing else
    b = client(openai_module, gw.base_url, OTHER_KEY)
    assert b.chat.completions.create(model="cheap", messages=HI, max_tokens=8).model == "faulty/ok"
    with pytest.raises(openai_module.PermissionDeniedError):
        b.chat.completions.create(model="faulty/tool-call", messages=HI, max_tokens=8)
    r = b.chat.completions.with_raw_response.create(model="auto", messages=HI, max_tokens=8)
    assert r.headers["x-squirrel-model"] == "faulty/ok"
    ids = {m.id for m in b.models.list()}
    assert ids == {"faulty/ok", "cheap", "auto"}
    app_text = repr(gw.app.state.gateway.keys) + repr(gw.gateway)
    assert TEAM_KEY not in app_text and "sha256" not in repr(gw.gateway.keys[0])


@pytest.mark.parametrize("model", ["faulty/error:500", "auto"])
def test_a_fallback_edge_never_leads_a_key_past_its_models(openai_module: Any, faulty: FaultyServer,
                                                            canary_env: str, model: str) -> None:
    """A key's ``models`` is a permission, not the pin a fallback edge may leave: team-b may use
    faulty/error:500 only, and the graph sends that model's failures to faulty/tool-call.
    Before, team-b's failed request was answered (and charged) by faulty/tool-call."""
    cfg = faulty_config(faulty)
    cfg["gateway"]["keys"][1]["models"] = ["faulty/error:500"]
    cfg["fallback"] = {"max_attempts": 3, "graph": {"faulty/error:500": ["faulty/tool-call"]}}
    with gateway(cfg) as gw:
        b = client(openai_module, gw.base_url, OTHER_KEY)
        before = faulty.by_model.get("tool-call", 0)
        with pytest.raises(openai_module.APIStatusError) as info:
            b.chat.completions.create(model=model, messages=HI, max_tokens=8)
        assert info.value.status_code == 502
        assert faulty.by_model.get("tool-call", 0) == before
        # team-a may use any model: the edge still leads it on
        a = client(openai_module, gw.base_url, TEAM_KEY)
        assert a.chat.completions.create(model="faulty/error:500", messages=HI,
                                         max_tokens=8).model == "faulty/tool-call"


def test_the_configured_permission_bounds_every_key(openai_module: Any, faulty: FaultyServer,
                                                    canary_env: str) -> None:
    """``[requirements] allowed_models`` is the ids a request may ever reach: GET /v1/models
    listed every model to a key without ``models`` of its own (and ``auto`` as "any"), and
    asking for one of them by id was a 400 "no model meets the requirements" instead of the
    403 a key's own limit gets."""
    cfg = faulty_config(faulty)
    cfg["requirements"] = {"allowed_models": ["faulty/ok", "faulty/tool-call"]}
    with gateway(cfg) as gw:
        a = client(openai_module, gw.base_url, TEAM_KEY)
        listed = {m.id: m.model_dump() for m in a.models.list()}
        assert set(listed) == {"faulty/ok", "faulty/tool-call", "cheap", "auto"}
        assert listed["auto"]["alias_of"] == ["faulty/ok", "faulty/tool-call"]
        with pytest.raises(openai_module.PermissionDeniedError) as info:
            a.chat.completions.create(model="faulty/slow:0.2", messages=HI, max_tokens=8)
        assert info.value.response.json()["error"]["code"] == "model_not_allowed"
        assert a.chat.completions.create(model="faulty/tool-call", messages=HI, max_tokens=8).model \
            == "faulty/tool-call"
        b = client(openai_module, gw.base_url, OTHER_KEY)  # its own models within it
        assert {m.id for m in b.models.list()} == {"faulty/ok", "cheap", "auto"}


def test_models_list_with_capabilities_limits_and_prices(openai_module: Any, faulty: FaultyServer,
                                                         canary_env: str, faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    models = {m.id: m for m in client(openai_module, gw.base_url).models.list()}
    ok = models["faulty/ok"].model_dump()
    assert ok["context_window"] == 4096 and ok["max_output_tokens"] == 64
    assert ok["pricing"]["input_per_million_usd"] == "1000"
    assert "tools" in ok["features"] and "chat" in ok["capabilities"]
    assert models["cheap"].model_dump()["alias_of"] == ["faulty/ok"]
    assert "auto" in models
    health = httpx.get(gw.base_url.removesuffix("/v1") + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = httpx.get(gw.base_url.removesuffix("/v1") + "/metrics").text
    assert "squirrel_gateway_requests" in metrics or "gen_ai_client" in metrics
    # the documented service name, not the SDK's "unknown_service:python3"
    assert 'service_name="squirrel-models"' in metrics


def test_the_sdk_retrieves_one_model(openai_module: Any, faulty: FaultyServer, canary_env: str,
                                     faulty_gw: GatewayThread) -> None:
    """``client.models.retrieve(id)`` (GET /v1/models/{id}) was a 404 "Unknown request URL"
    for every model: an OpenAI SDK did not route through unchanged. It answers the entry the
    list has, for the models, aliases and ``auto`` the key may use, and a 404
    ``model_not_found`` otherwise (as OpenAI answers for a model the key cannot access)."""
    a = client(openai_module, faulty_gw.base_url, TEAM_KEY)
    listed = {m.id: m.model_dump() for m in a.models.list()}
    for mid in ("faulty/ok", "cheap", "auto"):
        assert a.models.retrieve(mid).model_dump() == listed[mid]
    b = client(openai_module, faulty_gw.base_url, OTHER_KEY)
    assert b.models.retrieve("faulty/ok").id == "faulty/ok"
    for c, mid in ((b, "faulty/tool-call"), (a, "faulty/nope"), (a, "x" * 5000)):
        with pytest.raises(openai_module.NotFoundError) as info:
            c.models.retrieve(mid)
        err = info.value.response.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model" and len(err["message"]) < 300
    with pytest.raises(openai_module.AuthenticationError):
        client(openai_module, faulty_gw.base_url, "sqk-not-a-key-0000").models.retrieve("faulty/ok")


def test_headers_set_limits(openai_module: Any, faulty: FaultyServer, canary_env: str,
                                         faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    c = client(openai_module, gw.base_url)
    with pytest.raises(openai_module.APIStatusError) as info:
        c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=32,
                                  extra_headers={"X-Squirrel-Max-Cost": "0.000001"})
    assert info.value.status_code in (400, 402)
    # past the router's ceiling (1e15) the 400 named max_request_cost, which no client sent
    for name, bad in [("X-Squirrel-Max-Cost", v) for v in ("-1", "lots", "nan", "1e16")] + \
            [("X-Squirrel-Max-Latency-Ms", v) for v in ("0", "1e308")]:
        with pytest.raises(openai_module.BadRequestError) as info2:
            c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=8,
                                      extra_headers={name: bad})
        assert info2.value.response.json()["error"]["param"] == name.lower(), bad


def test_a_request_above_a_whole_tpm_limit_is_a_400_not_a_429(openai_module: Any, faulty: FaultyServer,
                                                               canary_env: str) -> None:
    """A request whose worst case is above the model's whole tpm limit can never be admitted:
    it was a 429, which the SDK (and every client) retries. Now a 400 naming the limit and the
    worst case, not retried, while a smaller request and a model whose limit fits still answer."""
    cfg = faulty_config(faulty)
    cfg["rate_limits"] = {"limits": [{"scope": "model:faulty/ok", "tpm": 40}]}
    with gateway(cfg) as gw:
        c = openai_module.OpenAI(base_url=gw.base_url, api_key=TEAM_KEY, max_retries=2, timeout=20)
        before = faulty.by_model["ok"]
        with pytest.raises(openai_module.BadRequestError) as info:
            c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=64)
        err = info.value.response.json()["error"]
        assert err["code"] == "request_exceeds_rate_limit" and err["type"] == "invalid_request_error"
        assert "tpm limit 40 on model:faulty/ok is below the" in err["message"]
        assert "tokens this attempt needs at worst" in err["message"]
        assert faulty.by_model["ok"] == before  # refused before any call upstream
        assert c.chat.completions.create(model="faulty/ok", messages=HI, max_tokens=4).model == "faulty/ok"
        assert c.chat.completions.create(model="faulty/slow:0.2", messages=HI, max_tokens=64).model \
            == "faulty/slow:0.2"


def test_budgets_never_overspend_under_concurrent_clients(openai_module: Any, faulty: FaultyServer,
                                                          canary_env: str) -> None:
    """32 clients at once against a key whose budget holds a few requests: the spend stays
    within the limit, the rest get 402, and nothing stays reserved."""
    cfg = faulty_config(faulty)
    cfg["budget"]["limits"] = [{"scope": "key:team-a", "period": "day", "limit": "0.5"}]
    cfg["timeout"] = 60.0  # a loaded machine must not turn refusals into deadlines
    with gateway(cfg) as gw:
        def one(i: int) -> int:
            c = client(openai_module, gw.base_url)
            try:
                c.chat.completions.create(model="faulty/slow:0.2", messages=[{"role": "user", "content": f"q{i}"}],
                                          max_tokens=64)
                return 200
            except openai_module.APIStatusError as e:
                return int(e.status_code)

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(one, range(64)))
        committed, reserved, open_ = budget_state(gw, "team-a")
        assert committed <= Decimal("0.5") and reserved == 0 and open_ == 0
        assert statuses.count(200) >= 1 and set(statuses) <= {200, 402}
        assert 402 in statuses


def test_disconnect_cancels_the_upstream_and_settles(faulty: FaultyServer, canary_env: str,
                                                     faulty_gw: GatewayThread) -> None:
    gw = faulty_gw
    before = budget_state(gw, "team-a")[0]
    body = {"model": "faulty/trickle:0.05", "messages": HI, "max_tokens": 64, "stream": True}
    with httpx.Client(timeout=10) as h, h.stream(
            "POST", gw.base_url + "/chat/completions", json=body,
            headers={"Authorization": f"Bearer {TEAM_KEY}"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass
    # the client is gone: the gateway cancels the upstream call, settles what was sent and
    # ends the request (wait for all three: the settlement comes before the request's end,
    # so a budget seen settled does not mean the request has ended)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        in_flight = gw.app.state.gateway.in_flight  # read first: the budget below is then settled
        committed, reserved, open_ = budget_state(gw, "team-a")
        if in_flight == 0 and open_ == 0 and reserved == 0:
            break
        time.sleep(0.02)
    # nothing stays reserved, and the tokens sent before the client left are charged
    assert in_flight == 0 and open_ == 0 and reserved == 0 and committed > before
    # a plain request cut the same way, once the upstream has it (not after a fixed read
    # timeout, which a loaded gateway can outlast before it calls the upstream at all): the
    # upstream connection carrying it is closed
    plain = json.dumps({**body, "model": "faulty/hang", "stream": False}).encode()
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(request_head(gw.port, plain) + plain)
        end = time.monotonic() + 10
        while not faulty.by_model["hang"] and time.monotonic() < end:
            time.sleep(0.005)
        assert faulty.by_model["hang"] == 1
        open_while_hung = faulty.open_connections
    end = time.monotonic() + 5
    while faulty.open_connections >= open_while_hung and time.monotonic() < end:
        time.sleep(0.01)
    assert faulty.open_connections < open_while_hung  # the hung upstream call was cancelled
    end = time.monotonic() + 5
    while budget_state(gw, "team-a")[2] and time.monotonic() < end:
        time.sleep(0.02)
    assert budget_state(gw, "team-a")[1:] == (0, 0)


def test_graceful_shutdown_finishes_in_flight_streams(openai_module: Any, faulty: FaultyServer,
                                                      canary_env: str) -> None:
    gw = gateway(faulty_config(faulty))
    thread = gw.__enter__()
    got: list[str] = []
    c = client(openai_module, thread.base_url)

    def read() -> None:
        for ch in c.chat.completions.create(model="faulty/trickle:0.05", messages=HI, max_tokens=64,
                                            stream=True):
            got.extend(x.delta.content or "" for x in ch.choices)

    reader = threading.Thread(target=read)
    reader.start()
    # in flight before the shutdown begins: a fixed pause let a loaded machine start the
    # shutdown first, and the stream was refused instead of finished
    end = time.monotonic() + 30
    while not thread.app.state.gateway.in_flight:
        assert time.monotonic() < end and reader.is_alive(), "the stream never reached the gateway"
        time.sleep(0.01)
    mm = thread.app.state.gateway.manager
    backend = mm.budget_backend
    gw.__exit__(None, None, None)  # stops accepting, lets the stream finish, closes the manager
    reader.join(10)
    assert "".join(got) == ANSWER
    assert backend.open_reservations == 0
    assert not thread.thread.is_alive()


def test_requests_cut_by_the_shutdown_get_a_503_in_openai_json(faulty: FaultyServer, canary_env: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Requests still in flight when ``shutdown_timeout`` ran out were cancelled by uvicorn
    under the app: a plain request got uvicorn's text "Internal Server Error" (a 500), a
    stream was cut without an error event, and each left "Exception in ASGI application" with
    a traceback in the log. They now end in OpenAI's error JSON (a 503 ``shutting_down``, or
    the error event of a stream), settled, and nothing is logged as an error."""
    cfg = faulty_config(faulty, shutdown_timeout=1.0)
    cfg["timeout"] = 60.0  # only the shutdown cuts them
    gw = gateway(cfg)
    thread = gw.__enter__()
    backend = thread.app.state.gateway.manager.budget_backend
    answers: dict[str, httpx.Response] = {}

    def ask(name: str, model: str, stream: bool) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": name}], "max_tokens": 64,
                "stream": stream}
        with httpx.Client(timeout=30) as h:
            answers[name] = h.post(thread.base_url + "/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {TEAM_KEY}"})

    faulty.script("trickle:0.05", "hang-stream")  # one chunk, then nothing
    askers = [threading.Thread(target=ask, args=a) for a in
              (("plain", "faulty/hang", False), ("stream", "faulty/trickle:0.05", True))]
    for t in askers:
        t.start()
    end = time.monotonic() + 10
    while thread.app.state.gateway.in_flight < 2 and time.monotonic() < end:
        time.sleep(0.01)
    caplog.set_level(logging.ERROR)
    gw.__exit__(None, None, None)
    for t in askers:
        t.join(10)
    plain, stream = answers["plain"], answers["stream"]
    secret_scanner.collect(plain.text, stream.text)
    assert plain.status_code == 503, plain.text
    assert plain.json()["error"]["code"] == "shutting_down"
    assert stream.status_code == 200
    last = [line for line in stream.text.splitlines() if line.startswith("data: ")][-1]
    assert json.loads(last[6:])["error"]["code"] == "shutting_down", stream.text[-300:]
    assert backend.open_reservations == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
            and "timeout graceful shutdown" not in r.getMessage()] == []
