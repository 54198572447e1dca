"""A provider's reported usage is taken as it is, except where it cannot be true: no prompt
at all, or fewer output tokens than the answer's text surely holds (no tokenizer makes fewer
than one token per ``MAX_TOKEN_BYTES`` bytes). Servers that do not count fill in zeros, and a
priced answer then cost $0: a budget never spent, whatever was asked. Such usage is counted
by the library instead, as a stream without usage is, and never above the reservation."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, Price, ToolCall, Usage
from squirrel_models.testing import Reply, ToolReply

from .helpers import card, provider

pytestmark = pytest.mark.anyio

PRICE = Price(Decimal("1"), Decimal("10"))
REQUEST = AIRequest.from_prompt("Tell me about squirrels in a few sentences.", max_tokens=200)
ANSWER = "Squirrels are small rodents that bury nuts and forget where. " * 4


def budgeted() -> dict[str, Any]:
    return {"budget": {"limits": [{"scope": "global", "limit": "5"}]}}


async def answered(squirrel_manager, reply) -> Any:
    p = provider("p", card("a", price=("1", "10"), context_window=4096,
                           max_output_tokens=512))
    p.script("a", reply)
    mm = squirrel_manager(budgeted())
    mm.register_model(p.models[0], p)
    async with mm:
        resp = await mm.complete(REQUEST)
        (state,) = await mm.budget_backend.usage(mm.tokens.charges(p.models[0], None))
        return resp, state


@pytest.mark.parametrize("reported", [Usage(0, 0), Usage(0, 90), Usage(12, 0), Usage(12, 1)])
async def test_impossible_reported_usage_is_counted(squirrel_manager, caplog,
                                                    reported: Usage) -> None:
    caplog.set_level(logging.WARNING, "squirrel_models")
    resp, state = await answered(squirrel_manager, Reply(ANSWER, usage=reported))
    usage = resp.usage
    assert usage.source in ("counted", "estimated")
    assert usage.input_tokens >= max(reported.input_tokens, 1)
    assert usage.output_tokens * 128 >= len(ANSWER) and usage.output_tokens <= 200
    assert resp.cost > 0 and state.committed == resp.cost
    assert "reported" in caplog.text and "p/a" in caplog.text


@pytest.mark.parametrize("reported", [Usage(12, 40), Usage(1, 2), Usage(3000, 4000)])
async def test_possible_reported_usage_is_kept_as_it_is(squirrel_manager,
                                                        reported: Usage) -> None:
    resp, state = await answered(squirrel_manager, Reply(ANSWER, usage=reported))
    assert resp.usage == reported
    assert resp.cost == PRICE.cost(reported) and state.committed == resp.cost


async def test_a_tool_call_reported_as_no_output_is_counted(squirrel_manager) -> None:
    call = ToolCall("c1", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    resp, _ = await answered(squirrel_manager, ToolReply([call], usage=Usage(20, 0)))
    assert resp.usage.output_tokens > 0 and resp.usage.input_tokens == 20


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.integers(0, 5000), output=st.integers(0, 5000),
       text=st.text(alphabet=st.characters(codec="utf-8"), max_size=600))
def test_any_reported_usage_prices_a_priced_answer_above_zero(squirrel_manager, prompt: int,
                                                             output: int, text: str) -> None:
    reported = Usage(prompt, output)

    async def run() -> Any:
        return await answered(squirrel_manager, Reply(text, usage=reported))

    resp, state = anyio.run(run)
    usage = resp.usage
    assert usage.input_tokens > 0 and usage.output_tokens * 128 >= len(text)
    assert resp.cost > 0 and state.committed == resp.cost
    if prompt > 0 and output * 128 >= len(text):
        assert usage == reported  # a possible report is kept, above the reservation too
    else:
        assert usage.source == "estimated" and usage.output_tokens <= 200


async def test_without_a_budget_the_cost_is_still_counted(squirrel_manager) -> None:
    # No budget applies: the attempt made no estimate up front, one is made for the count.
    p = provider("p", card("a", price=("1", "10")))
    p.script("a", Reply(ANSWER, usage=Usage(0, 0)))
    mm = squirrel_manager()
    mm.register_model(p.models[0], p)
    async with mm:
        resp = await mm.complete(REQUEST)
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens * 128 >= len(ANSWER)
    assert resp.cost > 0
