"""An answer decoded once (msgspec's typed path, when installed) or read generically: the same
outcome for any answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import ModelError
from squirrel_models_openai._errors import UpstreamError

from .mock import REQUEST, card, completion, json_response, provider

FULL_USAGE = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
              "prompt_tokens_details": {"cached_tokens": 60},
              "completion_tokens_details": {"reasoning_tokens": 25}}


_COUNT = st.one_of(st.integers(-2, 2**31 + 1), st.sampled_from([0, 3, 97, 2**31 - 1, 2**64, 1.0, 2.5,
                                                                 True, None, "7", [1]]))
_DETAILS = st.one_of(st.none(), st.just({}), st.just([]), st.just("x"),
                     st.fixed_dictionaries({}, optional={"cached_tokens": _COUNT,
                                                         "reasoning_tokens": _COUNT}))
_USAGE = st.one_of(st.none(), st.just(5), st.fixed_dictionaries(
    {}, optional={"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "input_tokens": _COUNT,
                  "output_tokens": _COUNT, "prompt_tokens_details": _DETAILS,
                  "completion_tokens_details": _DETAILS, "input_tokens_details": _DETAILS,
                  "total_tokens": _COUNT}))
_CONTENT = st.one_of(st.text(max_size=8), st.none(), st.just(3),
                     st.just([{"type": "text", "text": "a"}, "b"]))
_THOUGHT = st.one_of(st.none(), st.just(""), st.just("Let me think."), st.just(7))
_CALLS = st.one_of(st.none(), st.just([]), st.just(
    [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]), st.just("x"))
_MESSAGE = st.one_of(st.none(), st.just("m"), st.fixed_dictionaries(
    {}, optional={"role": st.just("assistant"), "content": _CONTENT, "tool_calls": _CALLS,
                  "refusal": st.one_of(st.none(), st.just("no"), st.just("")),
                  "reasoning_content": _THOUGHT, "reasoning": _THOUGHT}))
_CHOICE = st.one_of(st.just(1), st.fixed_dictionaries(
    {}, optional={"message": _MESSAGE, "index": st.just(0),
                  "finish_reason": st.one_of(st.none(), st.sampled_from(["stop", "content_filter"]),
                                             st.just(1))}))
_ANY = st.one_of(st.just([]), st.fixed_dictionaries(
    {}, optional={"choices": st.one_of(st.none(), st.lists(_CHOICE, max_size=2)), "usage": _USAGE,
                  "model": st.one_of(st.just("gpt-4o-mini-2024"), st.none(), st.just(4)),
                  "error": st.one_of(st.none(), st.just({"message": "bad", "code": 500}),
                                     st.just(""))}))
#: Answers of the usual shape, varied where the typed path must still agree.
_USUAL = st.fixed_dictionaries({
    "choices": st.lists(st.fixed_dictionaries(
        {"message": st.fixed_dictionaries({"content": st.one_of(st.text(max_size=8), st.none())},
                                          optional={"tool_calls": _CALLS,
                                                    "refusal": st.sampled_from([None, "", "no"]),
                                                    "reasoning_content": _THOUGHT}),
         "finish_reason": st.sampled_from([None, "stop", "content_filter", "tool_calls"])}),
        min_size=1, max_size=1),
    "usage": st.one_of(st.none(), st.fixed_dictionaries(
        {"prompt_tokens": _COUNT, "completion_tokens": _COUNT},
        optional={"prompt_tokens_details": _DETAILS, "completion_tokens_details": _DETAILS,
                  "total_tokens": _COUNT}))},
    optional={"model": st.sampled_from(["gpt-4o-mini-2024", None, 4]), "id": st.just("chatcmpl-1")})
_ANSWER = st.one_of(_USUAL, _ANY)


def _read(body: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    from squirrel_models_openai import _answer

    with monkeypatch.context() as m:
        if not fast:
            m.setattr(_answer, "_DECODE", [None])
        p = provider(lambda r: json_response(completion()))
        try:
            return p._answer(card(), REQUEST, body, None)
        except (ModelError, UpstreamError) as exc:
            return type(exc), str(exc), getattr(exc, "usage", None)


def test_the_usual_answer_is_decoded_once_with_msgspec() -> None:
    from squirrel_models_openai._answer import plain_answer

    pytest.importorskip("msgspec")
    parts = plain_answer(json.dumps(completion("Hi", FULL_USAGE)).encode())
    assert parts is not None and parts[0] == "Hi" and parts[5] == (100, 40, 60, 25, 140)


@given(answer=_ANSWER)
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_answer_reads_the_same_with_or_without_msgspec(answer: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The typed decoding takes only answers of the usual shape and gives what the generic
    path gives; every other answer goes to the generic path: the same response, or the same
    error with the same message, either way."""
    body = json.dumps(answer).encode()
    assert _read(body, True, monkeypatch) == _read(body, False, monkeypatch)
