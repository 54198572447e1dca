"""``Usage.from_report``: a provider's usage counts as billed, whichever way its server splits
them. What the parts leave out of ``total_tokens`` (Gemini's thoughts behind an OpenAI-compatible
proxy) or count apart (cached, reasoning) is charged; nothing is charged twice; a consistent
OpenAI report is kept as it is."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from squirrel_models import MalformedResponse, Usage
from squirrel_models.openai_format import response_from_openai

COUNT = st.integers(0, 10**6)


@given(prompt=COUNT, completion=COUNT, cached=COUNT, reasoning=COUNT,
       total=st.one_of(st.none(), st.integers(0, 4 * 10**6)))
def test_nothing_reported_is_left_out_or_counted_twice(prompt: int, completion: int, cached: int,
                                                       reasoning: int, total: int | None) -> None:
    u = Usage.from_report(prompt, completion, cached, reasoning, total)
    assert u.source == "reported" and (u.cached_tokens, u.reasoning_tokens) == (cached, reasoning)
    # every part within its whole (the OpenAI convention the cost relies on)
    assert u.input_tokens >= max(prompt, cached) and u.output_tokens >= max(completion, reasoning)
    if total is not None and prompt:
        assert u.total_tokens >= total  # the total is billed
    # and no more than every part counted apart, or the total
    most = prompt + cached + completion + reasoning
    assert u.total_tokens <= max(most, total or 0)


@given(prompt=st.integers(1, 10**6), completion=COUNT, data=st.data())
def test_a_consistent_openai_report_is_kept_as_it_is(prompt: int, completion: int, data: Any) -> None:
    cached = data.draw(st.integers(0, prompt))
    reasoning = data.draw(st.integers(0, completion))
    total = data.draw(st.sampled_from([None, prompt + completion, 0]))
    assert Usage.from_report(prompt, completion, cached, reasoning, total) == Usage(
        prompt, completion, cached, reasoning)


@pytest.mark.parametrize(("report", "billed"), [
    ((20, 151, 0, 0, 553), (20, 533)),        # the thoughts only in the total
    ((20, 151, 0, 100, 271), (20, 251)),      # reasoning counted apart
    # cached counted apart, or 100 hidden output tokens: output is the dearer reading
    ((900, 10, 100, 0, 1010), (900, 110)),
    ((20, 0, 0, 60, 81), (20, 61)),           # reasoning above the completion: added
    ((0, 0, 0, 0, 500), (0, 0)),              # no prompt count: the core counts it
])
def test_the_gap_goes_where_it_belongs(report: tuple[int, ...], billed: tuple[int, int]) -> None:
    u = Usage.from_report(*report)
    assert (u.input_tokens, u.output_tokens) == billed


@pytest.mark.parametrize("bad", [-1, 2**31, 2.5, "7", True])
def test_a_total_that_is_no_count_is_malformed(bad: Any) -> None:
    with pytest.raises(MalformedResponse, match="total_tokens"):
        Usage.from_report(3, 2, total=bad)


def test_response_from_openai_reads_the_total() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 151, "total_tokens": 553}}
    assert response_from_openai(body).usage == Usage(20, 533)
