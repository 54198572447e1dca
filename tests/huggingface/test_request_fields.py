"""The request fields through huggingface_hub: the exact body a real server on 127.0.0.1 (the
faulty server, which keeps each body) receives; answers with n choices; a local transformers
model honours top_p, seed and stop and refuses what it cannot do. The real llama.cpp server
runs them in the shared suite (tests/support/llama_suite.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    ConfigError,
    ImagePart,
    InvalidRequestError,
    Message,
    ModelCard,
    ModelOverride,
    ResponseFormat,
)
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.faulty_server import FaultyServer
from .conftest import CANARY_ENV, needs_local

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
DATA_URL = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
async def make(faulty: FaultyServer, canary_env: str) -> AsyncIterator[Callable[..., HuggingFaceProvider]]:
    made: list[HuggingFaceProvider] = []

    def build(**options: Any) -> HuggingFaceProvider:
        p = HuggingFaceProvider("faulty", HuggingFaceOptions(base_url=faulty.base_url, token_env=CANARY_ENV,
                                                             **options), models=[ModelOverride("ok")])
        made.append(p)
        return p

    yield build
    for p in made:
        await p.aclose()


def card(model: str = "ok") -> ModelCard:
    return ModelCard.for_provider("faulty", model, provider_type="huggingface")


async def test_every_field_reaches_the_server(make: Callable[..., HuggingFaceProvider],
                                              faulty: FaultyServer) -> None:
    p = make(extra_body={"repetition_penalty": 1.1})
    req = AIRequest([Message.user(["What colour?", ImagePart(DATA_URL, "high")])], max_tokens=20,
                    top_p=0.9, seed=42, stop="END", user="u-7",
                    response_format=ResponseFormat.json_schema(SCHEMA, "colour", strict=True))
    await p.complete(card(), req)
    body = faulty.payloads_seen[-1]
    assert {k: body.get(k) for k in ("top_p", "seed", "stop", "user", "response_format", "repetition_penalty")} == {
        "top_p": 0.9, "seed": 42, "stop": ["END"], "user": "u-7", "repetition_penalty": 1.1,
        # huggingface_hub sends a schema as TGI's grammar (it is given OpenAI's form)
        "response_format": {"type": "json_object", "value": SCHEMA}}
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What colour?"},
        {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "high"}}]}]
    assert body.get("n") is None  # one answer: not sent


async def test_unset_fields_are_not_sent(make: Callable[..., HuggingFaceProvider], faulty: FaultyServer) -> None:
    await make().complete(card(), AIRequest.from_prompt("hi", max_tokens=5))
    body = faulty.payloads_seen[-1]
    assert all(body.get(k) is None for k in ("top_p", "seed", "n", "user", "response_format"))


def answers(*texts: str, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "x", "object": "chat.completion", "created": 0, "model": "ok",
                            "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                         "finish_reason": "stop"} for i, t in enumerate(texts)]}
    if usage is not None:
        body["usage"] = {**usage, "total_tokens": sum(usage.values())}
    return json.dumps(body).encode()


async def test_n_answers(make: Callable[..., HuggingFaceProvider], faulty: FaultyServer) -> None:
    faulty.serve("ok", answers("red", "blue", usage={"prompt_tokens": 9, "completion_tokens": 2}))
    resp = await make().complete(card(), AIRequest.from_prompt("colour?", max_tokens=5, n=2))
    assert faulty.payloads_seen[-1]["n"] == 2
    assert [(c.index, c.text) for c in resp.choices] == [(0, "red"), (1, "blue")]
    assert resp.text == "red" and resp.usage.output_tokens == 2
    # without usage: estimated over both answers, within n times the cap
    faulty.serve("ok", answers("red " * 20, "blue"))
    resp = await make().complete(card(), AIRequest.from_prompt("colour?", max_tokens=5, n=2))
    assert resp.usage.source == "estimated" and resp.usage.output_tokens == 10


async def test_a_server_that_ignores_n_is_refused(make: Callable[..., HuggingFaceProvider],
                                                  faulty: FaultyServer) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await make().complete(card(), AIRequest.from_prompt("colour?", max_tokens=5, n=3))
    assert info.value.model_specific and info.value.usage is not None and info.value.usage.output_tokens > 0


# --- a local transformers model ------------------------------------------------------------


@pytest.fixture
async def local(tiny_model: Path) -> AsyncIterator[HuggingFaceProvider]:
    p = HuggingFaceProvider("loc", HuggingFaceOptions(model_path=str(tiny_model), threads=1))
    yield p
    await p.aclose()


@needs_local
@pytest.mark.parametrize(("kw", "field"), [
    ({"response_format": ResponseFormat.json()}, "response_format"),
    ({"n": 2}, "n"),
    ({"messages": [Message.user(["hi", ImagePart(DATA_URL)])]}, "messages[0].content"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
])
async def test_local_refuses_what_it_cannot_honour(local: HuggingFaceProvider, kw: dict[str, Any],
                                                   field: str) -> None:
    (c,) = await local.list_models()
    kw = dict(kw)  # the parameter is shared by both backends' runs
    messages = kw.pop("messages", [Message.user("hi")])
    req = AIRequest(messages, max_tokens=4, **kw)
    with pytest.raises(InvalidRequestError) as info:
        await local.complete(c, req)
    assert info.value.model_specific and field in str(info.value)
    with pytest.raises(InvalidRequestError):
        async for _ in local.stream(c, req):
            pass


@needs_local
async def test_local_seed_makes_sampling_reproducible(local: HuggingFaceProvider) -> None:
    (c,) = await local.list_models()
    req = AIRequest.from_prompt("hello", max_tokens=12, temperature=1.5, top_p=0.9, seed=1234, user="u")
    first = await local.complete(c, req)
    again = await local.complete(c, req)
    other = [await local.complete(c, AIRequest.from_prompt("hello", max_tokens=12, temperature=1.5,
                                                           top_p=0.9, seed=s)) for s in (1, 2, 3)]
    assert first.text == again.text  # a random-weight model: sampling is all there is
    assert any(o.text != first.text for o in other)


@pytest.mark.parametrize(("body", "field"), [
    ({"n": 3}, "extra_body.n"), ({"repetition_penalty": 1.1}, None), ({"max_tokens": 10**6}, "extra_body.max_tokens"),
    ({"stream": True}, "extra_body.stream"), ({"x": float("nan")}, "extra_body"),
    ({"best_of": 4}, "extra_body.best_of")])
def test_extra_body_cannot_change_what_a_request_may_cost(body: dict[str, object], field: str | None) -> None:
    # The openai plugin's rule (squirrel_models.optionchecks.extra_body_fields): {n = 3} made
    # every answer three on a reservation of one.
    if field is None:
        assert HuggingFaceOptions(base_url="http://127.0.0.1:9/v1", extra_body=body).extra_body == body
        return
    with pytest.raises(ConfigError) as info:
        HuggingFaceOptions(base_url="http://127.0.0.1:9/v1", extra_body=body)
    assert info.value.field == field
