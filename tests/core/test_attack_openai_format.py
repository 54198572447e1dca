"""The OpenAI format and the request fields under attack: any body ``from_openai`` is given,
and any ``chat.completion`` ``response_from_openai`` reads, ends in a value or a
:class:`SquirrelError` (one that names its field, for a request), never another exception
type; and text an upstream sends that is not valid Unicode (a lone surrogate, valid JSON) is
answered and charged, not crashed on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, ModelManager, ProviderType, hookimpl
from squirrel_models.errors import InvalidRequest, MalformedResponse, shown
from squirrel_models.openai_format import OpenAIChatRequest, response_from_openai
from squirrel_models.plugins import PluginManager
from squirrel_models.tokens import upper_bound

from .test_simple import Words

pytestmark = pytest.mark.anyio

_TEXT = st.text(max_size=6) | st.sampled_from(["", "\ud800", "auto", "user", "assistant", "tool", "json_object",
                                                "json_schema", "text", "function", "image_url",
                                                "https://x/a.png", "data:image/png;base64,AAAA"])
_KEYS = _TEXT | st.sampled_from(["type", "text", "url", "image_url", "function", "name", "parameters",
                                 "json_schema", "schema", "strict", "role", "content", "tool_calls", "id",
                                 "arguments", "detail", "cached_tokens", "reasoning_tokens"])
_SCALAR = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.integers(min_value=10**300, max_value=10**400) | st.floats() | _TEXT)
_JSON = st.recursive(_SCALAR, lambda c: st.lists(c, max_size=3) | st.dictionaries(_KEYS, c, max_size=4),
                     max_leaves=16)
_FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "user",
           "response_format", "tools", "tool_choice", "metadata", "stream", "stream_options", "logprobs",
           "presence_penalty", "logit_bias", "unknown"]
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]) | _JSON},
                                 optional={"content": _JSON, "name": _JSON, "tool_call_id": _JSON,
                                           "tool_calls": _JSON, "refusal": _JSON})
_BODY = st.fixed_dictionaries({"messages": st.lists(_MESSAGE, max_size=3) | _JSON},
                              optional=dict.fromkeys(_FIELDS, _JSON))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_BODY, passthrough=st.sampled_from([(), ("logit_bias",), ("unknown",)]))
def test_from_openai_ends_in_a_request_or_an_error_naming_the_field(body: dict[str, Any],
                                                                      passthrough: tuple[str, ...]) -> None:
    """A role that was an object or an array raised TypeError (unhashable); an int too large
    for a float, OverflowError; a huge seed was named "body" (its repr raised)."""
    try:
        parsed = OpenAIChatRequest.from_openai(body, passthrough=passthrough)
    except InvalidRequest as exc:
        error: InvalidRequest | None = exc
    else:
        error = None
        json.dumps(parsed.request.to_openai("m"))  # what was accepted can be sent
    if error is not None:
        assert error.field, error
        assert str(error) and repr(error)


def _choice() -> Any:
    message = st.fixed_dictionaries({"role": st.just("assistant") | _JSON},
                                    optional={"content": _JSON, "tool_calls": _JSON, "refusal": _JSON})
    return st.fixed_dictionaries({"message": message | _JSON}, optional={"finish_reason": _JSON, "index": _JSON})


_USAGE = st.fixed_dictionaries({}, optional={"prompt_tokens": _JSON, "completion_tokens": _JSON,
                                             "prompt_tokens_details": _JSON,
                                             "completion_tokens_details": _JSON})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.fixed_dictionaries({"choices": st.lists(_choice(), max_size=2) | _JSON},
                                  optional={"usage": _USAGE | _JSON, "model": _JSON}))
def test_response_from_openai_ends_in_an_answer_or_malformed(body: dict[str, Any]) -> None:
    """Usage details that were not objects raised AttributeError; a role that was an array,
    TypeError."""
    try:
        response_from_openai(body)
    except MalformedResponse as exc:
        str(exc)


def _circular() -> list[Any]:
    a: list[Any] = []
    a.append(a)
    return a


@pytest.mark.parametrize(("change", "field"), [
    ({"model": _circular()}, "model"),
    ({"messages": [_circular()]}, "messages[0]"),
    ({"temperature": _circular()}, "temperature"),
    ({"temperature": 10**400}, "temperature"),
    ({"top_p": -(10**400)}, "top_p"),
    ({"seed": 10**5000}, "seed"),
    ({"max_tokens": 10**5000}, "max_tokens"),
    ({"n": 10**5000}, "n"),
    ({"messages": [{"role": {}, "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
    ({"\ud800": 1}, "\\ud800"),
    ({"a\r\nb": 1}, "a\\r\\nb"),
    ({"k" * 10_000: 1}, "k" * 64 + "..."),
])
def test_hostile_values_are_named(change: dict[str, Any], field: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(InvalidRequest) as info:
        OpenAIChatRequest.from_openai(body)
    assert info.value.field == field
    assert len(str(info.value)) < 400


def test_shown_is_bounded_and_never_raises() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert shown(10**5000) == "an int of 16610 bits"
    assert shown(Hostile()) == "a Hostile"
    assert shown(_circular()) == "[[...]]"
    assert shown("\ud800\n") == "'\\ud800\\n'"
    assert len(shown("x" * 10_000)) == 60


def test_usage_details_that_are_not_objects_are_ignored() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": [1],
                      "completion_tokens_details": "x"}}
    usage = response_from_openai(body).usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (3, 2, 0)


# --- upstream text that is not valid Unicode ---------------------------------------------------

BAD = "a\ud800b\udfff"


def test_the_byte_bound_counts_a_lone_surrogate() -> None:
    assert upper_bound(text=BAD).tokens == 2 + 3 + 3


@pytest.mark.parametrize("tokenizer", [False, True], ids=["no-tokenizer", "tokenizer"])
async def test_answers_with_lone_surrogates_are_answered_and_charged(tokenizer: bool) -> None:
    """A stream without usage whose text held a lone surrogate: counting its tokens raised
    UnicodeEncodeError while the stream settled (the gateway answered 500)."""

    class Plugin:
        @hookimpl
        def register_providers(self) -> list[ProviderType]:
            return [ProviderType("words", lambda spec: Words(spec, [BAD, " c"], tokenizer))]

    pm = PluginManager(load_entry_points=False)
    pm.register(Plugin(), "words-plugin")
    cfg = {"providers": [{"name": "w", "type": "words",
                          "models": [{"name": "words", "price": {"input": 1, "output": 1}}]}],
           "budget": {"limits": [{"scope": "global", "period": "day", "limit": "1"}]}}
    async with ModelManager(cfg, plugins=pm) as mm:
        plain = await mm.complete(AIRequest.from_prompt("hi", max_tokens=16))
        assert plain.text == BAD + " c" and plain.usage.output_tokens > 0
        async with mm.stream(AIRequest.from_prompt("hi", max_tokens=16)) as s:
            text = "".join([c.text async for c in s])
        assert text == BAD + " c"
        assert s.response is not None and s.response.usage.output_tokens > 0
        assert mm.budget_backend.open_reservations == 0
