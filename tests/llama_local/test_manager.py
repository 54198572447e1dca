"""Through ModelManager (core's in-memory budget): price 0 honoured, exact counted usage,
streaming, and the embedded default configuration's provider."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from squirrel_models.manager import ModelManager
from squirrel_models.types import AIRequest

pytestmark = pytest.mark.anyio


async def test_manager_routes_to_local_model(smol_path: Path) -> None:
    cfg = {"providers": [{"name": "local", "type": "llama-local", "options": {"models": [str(smol_path)]}}],
           "budget": {"limits": [{"scope": "global", "period": "day", "limit": "0"}]}}
    async with ModelManager(cfg) as mm:
        req = AIRequest.from_prompt("Say hello.", max_tokens=8)
        resp = await mm.complete(req)
        assert resp.model == "local/SmolLM2-135M-Instruct.Q4_1"
        assert resp.cost == Decimal(0)  # an explicit price of 0 fits even a $0 budget
        assert resp.usage.source == "counted"
        est = mm.tokens.estimate(req, mm.models[resp.model])
        assert est.prompt.exact and est.prompt.tokens == resp.usage.input_tokens
        async with mm.stream(req) as s:
            text = "".join([c.text async for c in s])
        assert s.response is not None and s.response.text == text
        assert s.response.usage.source == "counted" and s.response.cost == 0
        (u,) = await mm.tokens.check_budget(mm.models[resp.model])
        assert u.committed == 0 and u.reserved == 0


async def test_tool_requests_are_refused_or_routed_around(smol_path: Path) -> None:
    """The cards do not list ``tools``: a request that needs them finds no model, and tools sent
    anyway are refused clearly (not silently dropped)."""
    from squirrel_models import CapabilityNotSupported, InvalidRequestError, ModelRequirements

    cfg = {"providers": [{"name": "local", "type": "llama-local", "options": {"models": [str(smol_path)]}}]}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    req = AIRequest.from_prompt("Weather in Paris?", max_tokens=8, tools=[tool])
    async with ModelManager(cfg) as mm:
        assert all("tools" not in c.features for c in mm.models.values())
        with pytest.raises(CapabilityNotSupported):
            await mm.complete(req, ModelRequirements(required_features={"tools"}))
        with pytest.raises(InvalidRequestError, match="do not take tools"):
            await mm.complete(req)
        with pytest.raises(InvalidRequestError, match="do not take tools"):
            async with mm.stream(req) as s:
                async for _ in s:
                    pass
