"""tiktoken counts, offline, against the numbers of OpenAI's cookbook; the count_tokens hook."""

from __future__ import annotations

import pytest
from squirrel_models import AIRequest, Message, ModelCard, TokenCount
from squirrel_models_openai import OpenAIOptions, OpenAIProvider
from squirrel_models_openai._tokens import count_request, count_text, encoding_for
from squirrel_models_openai.plugin import count_tokens

# "How to count tokens with tiktoken": these six messages are 129 prompt tokens on
# gpt-3.5-turbo and gpt-4 (cl100k_base) and 124 on gpt-4o and gpt-4o-mini (o200k_base),
# as the API reported.
COOKBOOK = AIRequest(messages=(
    Message("system", "You are a helpful, pattern-following assistant that translates corporate jargon "
                      "into plain English."),
    Message("system", "New synergies will help drive top-line growth.", name="example_user"),
    Message("system", "Things working well together will increase revenue.", name="example_assistant"),
    Message("system", "Let's circle back when we have more bandwidth to touch base on opportunities for "
                      "increased leverage.", name="example_user"),
    Message("system", "Let's talk later when we're less busy about how to do better.", name="example_assistant"),
    Message("user", "This late pivot means we don't have time to boil the ocean for the client deliverable."),
))


def test_text_counts_offline() -> None:
    enc = encoding_for("gpt-4")
    assert enc is not None and enc.name == "cl100k_base"
    assert enc.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]  # the cookbook's example
    assert count_text("gpt-4", "tiktoken is great!") == TokenCount(6, True, "tiktoken cl100k_base")
    assert encoding_for("gpt-4o-mini").name == "o200k_base"  # type: ignore[union-attr]
    assert encoding_for("openai/gpt-4o") is encoding_for("gpt-4o")  # OpenRouter names


@pytest.mark.parametrize(("model", "tokens"), [
    ("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124),
])
def test_cookbook_chat_counts(model: str, tokens: int) -> None:
    counted = count_request(model, COOKBOOK)
    assert counted is not None and (counted.tokens, counted.exact) == (tokens, True)


def test_tools_and_unverified_families_are_not_exact() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                             "parameters": {"type": "object", "properties": {
                                                 "city": {"type": "string", "description": "The city"}}}}}
    with_tools = AIRequest.from_prompt("Weather in Paris?", tools=(tool,))
    plain = AIRequest.from_prompt("Weather in Paris?")
    a, b = count_request("gpt-4o", with_tools), count_request("gpt-4o", plain)
    assert a is not None and b is not None
    assert not a.exact and b.exact and a.tokens > b.tokens
    assert count_request("o3-mini", plain).exact is False  # type: ignore[union-attr]


def test_unknown_tokenizers_give_none() -> None:
    assert count_request("smollm2", COOKBOOK) is None
    assert count_text("llama-3-8b", "hi") is None
    assert count_request("whatever", COOKBOOK, encoding="o200k_base") is not None


def test_count_tokens_hook() -> None:
    gpt = ModelCard.for_provider("oa", "gpt-4o", provider_type="openai")
    local = ModelCard.for_provider("oa", "smollm2", provider_type="openai")
    other = ModelCard.for_provider("x", "gpt-4o", provider_type="scripted")
    p = OpenAIProvider("oa", OpenAIOptions(discover=False))
    assert count_tokens(gpt, p, COOKBOOK, None).tokens == 124  # type: ignore[union-attr]
    assert count_tokens(gpt, p, None, "tiktoken is great!").exact  # type: ignore[union-attr]
    assert count_tokens(local, p, COOKBOOK, None) is None
    assert count_tokens(other, p, COOKBOOK, None) is None
    azure = OpenAIProvider("az", OpenAIOptions(discover=False, encoding="o200k_base"))
    deployment = ModelCard.for_provider("az", "my-deployment", provider_type="openai")
    counted = count_tokens(deployment, azure, COOKBOOK, None)
    assert counted is not None and counted.tokens == 124 and not counted.exact  # framing unverified


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_a_server_that_reports_zero_tokens_is_charged_what_it_answered(
        squirrel_manager, stream: bool) -> None:
    """Servers that do not count send usage of zeros; the answer was priced at $0 and the
    budget never spent. The plugin's own count stands in, as for a stream without usage."""
    from decimal import Decimal

    from squirrel_models import Price

    from ..support.budget_workers import complete_or_stream
    from .mock import completion, delta, json_response, provider, sse, stream_response, usage_event

    text = "Squirrels bury nuts and forget where they put most of them. " * 3
    zeros = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    def answer(_: object) -> object:
        if stream:
            return stream_response(sse(delta(text), delta(None, "stop"), usage_event(zeros)))
        return json_response(completion(text, zeros))

    card = ModelCard.for_provider("oa", "gpt-4o-mini", provider_type="openai",
                                  price=Price(Decimal("1"), Decimal("10")), context_window=4096,
                                  max_output_tokens=256, features={"streaming"})
    mm = squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "1"}]}})
    mm.register_model(card, provider(answer))
    request = AIRequest.from_prompt("Tell me about squirrels.", max_tokens=100)
    async with mm:
        resp = await complete_or_stream(mm, request, stream=stream)
        (state,) = await mm.budget_backend.usage(mm.tokens.charges(card, None))
    assert resp.usage.output_tokens == count_text("gpt-4o-mini", text).tokens
    assert resp.usage.input_tokens == count_request("gpt-4o-mini", request).tokens
    assert resp.cost > 0 and state.committed == resp.cost
