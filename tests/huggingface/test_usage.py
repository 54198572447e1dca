"""Usage reported by a Hugging Face server is validated at the boundary (issue 12): absurd
counts are a MalformedResponse, never a cost a budget would take."""

from __future__ import annotations

from typing import Any

import pytest
from squirrel_models import MalformedResponse, Usage
from squirrel_models_huggingface.remote import parse_usage


@pytest.mark.parametrize("bad", [1e30, -1, True, 2**31, 12.5, "7"])
@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_absurd_usage_is_malformed(field: str, bad: Any) -> None:
    with pytest.raises(MalformedResponse):
        parse_usage({"prompt_tokens": 10, "completion_tokens": 5, field: bad})


def test_sane_usage_is_kept() -> None:
    assert parse_usage({"prompt_tokens": 10, "completion_tokens": 5}) == Usage(10, 5)


def test_tokens_the_parts_leave_out_of_the_total_are_billed() -> None:
    # Gemini's thoughts behind an OpenAI-compatible proxy: only the total holds them
    assert parse_usage({"prompt_tokens": 20, "completion_tokens": 151, "total_tokens": 553}) == Usage(20, 533)
    # cached tokens counted apart from the prompt: added once, not taken for the prompt
    assert parse_usage({"prompt_tokens": 10, "completion_tokens": 5,
                        "prompt_tokens_details": {"cached_tokens": 40}}) == Usage(50, 5, 40)
