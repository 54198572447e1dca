"""Tests an OpenAI-compatible provider plugin runs against the real llama.cpp server
(:mod:`.llama_server`, SmolLM2-135M-Instruct, n_ctx 2048): the core's provider conformance
suite, model cards, usage reported or estimated, context overflow and a ModelManager end to end.
Subclass in the plugin's tests (the class name must start with ``Test``)::

    class TestAgainstLlamaServer(LlamaServerSuite):
        provider_type, name, key_option, key_env = "openai", "local", "api_key_env", "SQUIRREL_TEST_LLAMA_KEY"
        make = staticmethod(make)  # (server, **options) -> a provider serving "smollm2", window 2048

Temperature 0 is not reproducible on this server: never assert exact text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import pytest
from squirrel_models import (
    AIRequest,
    ContextWindowExceeded,
    InvalidRequestError,
    ModelManager,
    ResponseFormat,
)
from squirrel_models.providers import Provider
from squirrel_models.testing.conformance import ProviderConformance

from .llama_server import LlamaServer

__all__ = ["PROMPT", "LlamaServerSuite"]

PROMPT = AIRequest.from_prompt("Name a colour.", max_tokens=8, temperature=0.0)


class LlamaServerSuite(ProviderConformance):
    """The tests; subclasses say how to build their provider and configure it."""

    pytestmark = pytest.mark.anyio
    passes_tools_through = True  # OpenAI-compatible: the server decides
    #: The provider type, the instance name ``make`` gives, the key option and its variable.
    provider_type: ClassVar[str]
    name: ClassVar[str]
    key_option: ClassVar[str]
    key_env: ClassVar[str]
    make: ClassVar[Callable[..., Any]]

    @pytest.fixture
    async def provider(self, llama_server: LlamaServer, canary_env: str) -> AsyncIterator[Any]:
        p = self.make(llama_server)
        yield p
        await p.aclose()

    @pytest.fixture
    def secrets(self, llama_server: LlamaServer) -> Sequence[str]:
        return [llama_server.api_key] if llama_server.api_key else []

    async def test_cards(self, provider: Provider) -> None:
        (card,) = await provider.list_models()
        assert (card.id, card.model, card.provider_type) == (f"{self.name}/smollm2", "smollm2", self.provider_type)
        assert card.context_window == 2048  # from the configuration
        assert card.price is None  # unknown, never $0

    async def test_complete_reports_usage(self, provider: Provider) -> None:
        (card,) = await provider.list_models()
        resp = await provider.complete(card, PROMPT)
        assert resp.text.strip() and resp.usage.source == "reported"
        assert resp.usage.input_tokens > 5 and 0 < resp.usage.output_tokens <= 8
        assert resp.finish_reason in ("stop", "length")

    async def test_stream_estimates_what_the_server_does_not_report(self, provider: Provider) -> None:
        (card,) = await provider.list_models()
        chunks = [c async for c in provider.stream(card, PROMPT)]
        text = "".join(c.text for c in chunks)
        assert text.strip() and len(chunks) >= 2
        usage = chunks[-1].usage
        assert usage is not None and usage.source == "estimated"  # llama.cpp streams carry no usage
        assert usage.output_tokens == min(len(text.encode()), 8)  # an upper bound on what arrived
        assert usage.input_tokens >= (await provider.complete(card, PROMPT)).usage.input_tokens

    async def test_context_window_exceeded(self, provider: Provider) -> None:
        (card,) = await provider.list_models()
        with pytest.raises(ContextWindowExceeded) as info:
            await provider.complete(card, AIRequest.from_prompt("word " * 3000, max_tokens=8))
        assert info.value.window == 2048 and info.value.needed is not None and info.value.needed > 2048

    async def test_json_mode_holds_the_answer_to_json(self, provider: Provider) -> None:
        """The server's grammar holds the answer to JSON: it opens an object at once."""
        (card,) = await provider.list_models()
        resp = await provider.complete(card, AIRequest.from_prompt(
            "Name a colour.", max_tokens=24, response_format=ResponseFormat.json()))
        assert resp.text.lstrip().startswith("{"), resp.text

    async def test_stop_seed_top_p_and_user_are_taken(self, provider: Provider) -> None:
        (card,) = await provider.list_models()
        resp = await provider.complete(card, AIRequest.from_prompt(
            "Write a sentence about the sea.", max_tokens=32, stop=["e"], seed=7, top_p=0.5,
            temperature=0.7, user="user-1"))
        # English about the sea has an "e" within 32 tokens: the server stopped there
        assert "e" not in resp.text and resp.finish_reason == "stop", resp

    async def test_n_the_server_ignores_is_refused_and_charged(self, provider: Provider) -> None:
        """llama.cpp answers once whatever n says: that model cannot honour n, another may;
        what it used is on the error, for the core to charge."""
        (card,) = await provider.list_models()
        with pytest.raises(InvalidRequestError) as info:
            await provider.complete(card, AIRequest.from_prompt("Name a colour.", max_tokens=4, n=2))
        assert info.value.model_specific and not info.value.retryable
        assert info.value.usage is not None and 0 < info.value.usage.output_tokens <= 8

    async def test_selection_routes_by_what_the_request_needs(self, llama_server: LlamaServer,
                                                               canary_env: str) -> None:
        """Two entries for the same server, one declaring JSON mode: a JSON request goes there,
        the decision says why the other was left out; a request for n=2 is refused by both
        (llama.cpp answers once) and what they used is charged, nothing left reserved."""
        from squirrel_models import SquirrelError

        options = {"base_url": llama_server.base_url, self.key_option: self.key_env}
        model = {"name": "smollm2", "context_window": 2048, "price": {"input": "0.1", "output": "0.2"}}
        cfg = {"providers": [
            {"name": "plain", "type": self.provider_type, "discover": False, "options": options, "models": [model]},
            {"name": "json", "type": self.provider_type, "discover": False, "options": options,
             "models": [{**model, "features": ["+json_mode"]}]}],
            "budget": {"limits": [{"scope": "global", "limit": "1"}]}}
        async with ModelManager(cfg) as mm:
            resp = await mm.complete(AIRequest.from_prompt(
                "Name a colour.", max_tokens=24, response_format={"type": "json_object"}))
            assert resp.model == "json/smollm2" and resp.text.lstrip().startswith("{")
            assert resp.decision.excluded == {"plain/smollm2": "lacks feature json_mode"}
            with pytest.raises(SquirrelError) as info:
                await mm.complete(AIRequest.from_prompt("Name a colour.", max_tokens=4, n=2))
            (u,) = await mm.tokens.check_budget(mm.models["json/smollm2"])
        errors = getattr(info.value, "errors", [info.value])
        assert len(errors) == 2 and all(isinstance(e, InvalidRequestError) for e in errors), info.value
        assert u.reserved == 0 and u.committed > resp.cost  # the refused attempts' tokens too

    async def test_model_manager_end_to_end(self, llama_server: LlamaServer, canary_env: str) -> None:
        cfg = {"providers": [{"name": self.name, "type": self.provider_type,
                              "options": {"base_url": llama_server.base_url, self.key_option: self.key_env},
                              "models": [{"name": "smollm2", "context_window": 2048,
                                          "price": {"input": "0.1", "output": "0.2"}}]}],
               "budget": {"limits": [{"scope": "global", "limit": "1"}]}}
        async with ModelManager(cfg) as mm:
            assert list(mm.models) == [f"{self.name}/smollm2"]
            resp = await mm.complete(PROMPT)
            assert resp.model == f"{self.name}/smollm2" and resp.text.strip()
            assert resp.usage.source == "reported" and resp.cost is not None and resp.cost > 0
            async with mm.stream(PROMPT) as s:
                parts = [c.text async for c in s]
            assert s.response is not None and s.response.text == "".join(parts)
            assert s.response.usage.source == "estimated" and s.response.cost is not None

    async def test_a_401_names_the_key_option(self, llama_server: LlamaServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """A wrong key's 401 says which option (and variable) holds the key, never the key."""
        from squirrel_models import AuthenticationError

        from .canary import leaks, texts_of

        wrong = "sk-wrong-key-5e0b9a"
        monkeypatch.setenv("SQUIRREL_TEST_WRONG_KEY", wrong)
        options = {"base_url": llama_server.base_url, self.key_option: "SQUIRREL_TEST_WRONG_KEY"}
        cfg = {"providers": [{"name": self.name, "type": self.provider_type, "discover": False, "options": options,
                              "models": [{"name": "smollm2", "context_window": 2048,
                                          "price": {"input": 0, "output": 0}}]}]}
        async with ModelManager(cfg) as mm:
            with pytest.raises(AuthenticationError) as info:
                await mm.complete(PROMPT)
        assert info.value.status_code == 401
        assert f"providers[0].options.{self.key_option} (SQUIRREL_TEST_WRONG_KEY)" in str(info.value)
        assert not leaks(texts_of(info.value), wrong)
