"""The request fields in the exact body sent (MockTransport), and answers with n choices.
Against the real llama.cpp server they run in the shared suite (tests/support/llama_suite.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from squirrel_models import (
    AIRequest,
    ConfigError,
    ImagePart,
    InvalidRequestError,
    MalformedResponse,
    Message,
    ModelManager,
    ResponseFormat,
    ToolCall,
)

from .mock import card, completion, json_response, provider

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def capture(answer: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return json_response(answer)

    return bodies, handler


async def test_every_field_is_sent_as_openai_names_it() -> None:
    bodies, handler = capture(completion("{}", usage={"prompt_tokens": 9, "completion_tokens": 2}))
    p = provider(handler)
    req = AIRequest([Message.system("Answer in JSON."),
                     Message.user(["What colour is this?", ImagePart(DATA_URL, "low"),
                                   ImagePart("https://example.test/cat.png")])],
                    max_tokens=20, temperature=0.3, top_p=0.9, seed=42, stop=["END", "STOP"], user="u-7",
                    response_format=ResponseFormat.json_schema(SCHEMA, "colour", strict=True))
    await p.complete(card(), req)
    (body,) = bodies
    assert {k: body[k] for k in ("top_p", "seed", "stop", "user", "response_format", "temperature")} == {
        "top_p": 0.9, "seed": 42, "stop": ["END", "STOP"], "user": "u-7", "temperature": 0.3,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "colour", "schema": SCHEMA, "strict": True}}}
    assert "n" not in body  # one answer: OpenAI's default, not sent
    assert body["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": [
            {"type": "text", "text": "What colour is this?"},
            {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}}]}]


async def test_unset_fields_are_not_sent() -> None:
    bodies, handler = capture(completion("hi", usage={"prompt_tokens": 3, "completion_tokens": 1}))
    await provider(handler).complete(card(), AIRequest.from_prompt("hi", max_tokens=5))
    (body,) = bodies
    assert not {"top_p", "seed", "n", "user", "response_format", "stop"} & set(body)
    bodies, handler = capture(completion("{}", usage={"prompt_tokens": 3, "completion_tokens": 1}))
    await provider(handler).complete(card(), AIRequest.from_prompt("hi", response_format="json_object"))
    assert bodies[0]["response_format"] == {"type": "json_object"}


def answers(*texts: str, usage: dict[str, int] | None = None, order: list[int] | None = None) -> dict[str, Any]:
    body = completion(usage=usage)
    idx = order or list(range(len(texts)))
    body["choices"] = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                        "finish_reason": "stop"} for i in idx]
    return body


async def test_n_answers_come_back_in_index_order_with_their_usage() -> None:
    bodies, handler = capture(answers("red", "blue", "green", usage={"prompt_tokens": 9, "completion_tokens": 3},
                                      order=[2, 0, 1]))
    resp = await provider(handler).complete(card(), AIRequest.from_prompt("colour?", max_tokens=5, n=3))
    assert bodies[0]["n"] == 3 and bodies[0]["max_tokens"] == 5  # per answer
    assert [(c.index, c.text) for c in resp.choices] == [(0, "red"), (1, "blue"), (2, "green")]
    assert resp.text == "red" and (resp.usage.input_tokens, resp.usage.output_tokens) == (9, 3)


async def test_n_answers_without_usage_are_counted_together() -> None:
    _, handler = capture(answers("red red red", "blue"))
    resp = await provider(handler).complete(card(), AIRequest.from_prompt("colour?", max_tokens=5, n=2))
    one = await provider(capture(completion("red red red"))[1]).complete(
        card(), AIRequest.from_prompt("colour?", max_tokens=5))
    assert resp.usage.output_tokens == one.usage.output_tokens + 1  # "blue" is one token
    assert resp.usage.input_tokens == one.usage.input_tokens  # the prompt is read once


async def test_a_server_that_ignores_n_is_refused_with_its_usage() -> None:
    _, handler = capture(completion("red", usage={"prompt_tokens": 9, "completion_tokens": 1}))
    with pytest.raises(InvalidRequestError) as info:
        await provider(handler).complete(card(), AIRequest.from_prompt("colour?", max_tokens=5, n=2))
    assert info.value.model_specific and info.value.usage is not None
    assert info.value.usage.output_tokens == 1 and info.value.model_id == "oa/gpt-4o-mini"


@pytest.mark.parametrize("indexes", [[0, 0], [1, 2], ["0", 1]])
async def test_misnumbered_choices_are_malformed(indexes: list[Any]) -> None:
    body = answers("a", "b")
    for c, i in zip(body["choices"], indexes, strict=True):
        c["index"] = i
    _, handler = capture(body)
    with pytest.raises(MalformedResponse):
        await provider(handler).complete(card(), AIRequest.from_prompt("x", max_tokens=5, n=2))


async def test_choices_keep_their_tool_calls() -> None:
    body = answers("", "")
    body["choices"][1]["message"]["tool_calls"] = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body["choices"][1]["finish_reason"] = "tool_calls"
    _, handler = capture(body)
    resp = await provider(handler).complete(card(), AIRequest.from_prompt("x", max_tokens=5, n=2))
    assert resp.choices[1].tool_calls == (ToolCall("c1", "f", "{}"),)
    assert resp.choices[1].finish_reason == "tool_calls" and resp.choices[0].tool_calls == ()


async def test_images_count_in_the_prompt_estimate() -> None:
    """tiktoken cannot count an image: the count adds the core's allowance and says it is
    approximate, so the reservation covers it."""
    from squirrel_models.types import IMAGE_TOKENS
    from squirrel_models_openai._tokens import count_request

    plain = count_request("gpt-4o-mini", AIRequest.from_prompt("look"))
    seen = count_request("gpt-4o-mini", AIRequest([Message.user(["look", ImagePart(DATA_URL)])]))
    assert plain is not None and seen is not None and plain.exact and not seen.exact
    assert seen.tokens >= plain.tokens + IMAGE_TOKENS
    schema = count_request("gpt-4o-mini", AIRequest.from_prompt(
        "look", response_format=ResponseFormat.json_schema(SCHEMA)))
    assert schema is not None and not schema.exact and schema.tokens > plain.tokens


@pytest.mark.parametrize(("model", "per_image"), [
    ("gpt-4o-mini", 48_169), ("gpt-4o-mini-2024-07-18", 48_169), ("openai/gpt-4o-mini", 48_169),
    ("gpt-4.1-nano", 3_779), ("gpt-4.1-mini", 2_489), ("o4-mini", 2_642),
    ("gpt-4o", 2_048), ("gpt-4.1", 2_048)])
def test_an_image_counts_what_the_model_family_bills_at_most(model: str, per_image: int) -> None:
    """gpt-4o-mini bills an image as up to 48,169 prompt tokens (2,833 + 8 tiles of 5,667):
    the core's allowance of 2,048 made the reservation of an image request to it a
    twentieth of what it could cost, and the excess was recorded as overspend. Each family
    whose images cost more than the allowance counts its own bound; the others keep it."""
    from squirrel_models_openai._tokens import count_request

    plain = count_request(model, AIRequest.from_prompt("look"))
    two = count_request(model, AIRequest([Message.user(["look", ImagePart(DATA_URL),
                                                       ImagePart(DATA_URL, "low")])]))
    assert plain is not None and two is not None and not two.exact
    assert two.tokens - plain.tokens >= 2 * per_image
    assert two.tokens - plain.tokens < 2 * per_image + 50  # the parts' framing, no more


def config(extra_body: dict[str, Any]) -> dict[str, Any]:
    return {"providers": [{"name": "oa", "type": "openai", "discover": False,
                           "options": {"base_url": "http://127.0.0.1:9/v1", "extra_body": extra_body},
                           "models": [{"name": "m", "price": {"input": "1", "output": "1"}}]}]}


@pytest.mark.parametrize("name", ["n", "max_tokens", "max_completion_tokens", "stream",
                                  "stream_options", "tools", "tool_choice", "messages", "model"])
def test_extra_body_cannot_set_what_changes_the_cost(name: str) -> None:
    # extra_body goes into every chat request: {n = 4} made every answer four (a budget
    # reserving one was overspent fourfold, on every request), max_completion_tokens beside
    # max_tokens lifted the output cap where the server prefers it (vLLM).
    with pytest.raises(ConfigError) as info:
        ModelManager(config({name: 4}))
    assert info.value.field == f"providers[0].options.extra_body.{name}"


@pytest.mark.parametrize(("name", "value"), [("service_tier", "priority"), ("audio", {"voice": "alloy"}),
                                             ("prediction", {"type": "content", "content": "x"}),
                                             ("web_search_options", {})])
def test_extra_body_cannot_buy_what_the_prices_do_not_cover(name: str, value: Any) -> None:
    # service_tier = "priority" on every request was billed above the configured prices.
    with pytest.raises(ConfigError, match="costs upstream") as info:
        ModelManager(config({name: value}))
    assert info.value.field == f"providers[0].options.extra_body.{name}"


@pytest.mark.parametrize("tier", ["flex", "default", "auto"])
def test_extra_body_may_choose_a_tier_that_costs_no_more(tier: str) -> None:
    ModelManager(config({"service_tier": tier}))


@pytest.mark.parametrize("body", [{"x": float("nan")}, {"x": float("inf")}, {"x": {"y": [float("-inf")]}}])
def test_extra_body_that_is_no_json_is_refused_at_start_up(body: dict[str, Any]) -> None:
    # TOML writes nan and inf; json.dumps sent them as NaN and Infinity, which no JSON parser
    # takes: every request was a 400 from the upstream.
    with pytest.raises(ConfigError) as info:
        ModelManager(config(body))
    assert info.value.field == "providers[0].options.extra_body"
