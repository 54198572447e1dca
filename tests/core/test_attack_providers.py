"""A provider that raises what it should not (a client library's error its plugin does not map,
the plugin's own bug, a wrong yield): the request still ends in a :class:`SquirrelError` (it
ended with the raw exception), the next candidate is tried, nothing stays reserved, and the
foreign exception's text is redacted on the way out."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from squirrel_models import AIRequest, ModelManager, ProviderType, hookimpl
from squirrel_models.errors import MidStreamError, ModelError
from squirrel_models.plugins import PluginManager
from squirrel_models.secrets import Secret

from ..support import secret_scanner
from .test_simple import Words

pytestmark = pytest.mark.anyio

CANARY = secret_scanner.canary("sk-9f3Kq7Zx2Lm8Wv4Tb6Yc1Nd")
Secret(CANARY)  # registered with the library's redaction point, as a provider's key is


def manager(script: list[Any], *, second: bool = False) -> ModelManager:
    class Plugin:
        @hookimpl
        def register_providers(self) -> list[ProviderType]:
            return [ProviderType("words", lambda spec: Words(spec, script)),
                    ProviderType("good", lambda spec: Words(spec, ["fine ", "answer"]))]

    pm = PluginManager(load_entry_points=False)
    pm.register(Plugin(), "words-plugin")
    providers = [{"name": "w", "type": "words", "models": [{"name": "words", "price": {"input": 1, "output": 1}}]}]
    if second:
        providers.append({"name": "g", "type": "good",
                          "models": [{"name": "words", "price": {"input": 2, "output": 2}}]})
    return ModelManager({"providers": providers,
                         "budget": {"limits": [{"scope": "global", "period": "day", "limit": "1"}]}},
                        plugins=pm)


FOREIGN = [RuntimeError(f"client closed, key {CANARY}"), Exception("boom"), ZeroDivisionError("x"),
           5, object()]  # the last two: a yield SimpleProvider refuses with TypeError


@pytest.mark.parametrize("bad", FOREIGN, ids=lambda b: type(b).__name__)
async def test_a_foreign_exception_from_a_provider_is_a_typed_error(bad: Any) -> None:
    async with manager([bad]) as mm:
        with pytest.raises(ModelError) as info:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
        assert "provider 'w' raised" in str(info.value)
        with pytest.raises(ModelError) as opening:
            async with mm.stream(AIRequest.from_prompt("hi", max_tokens=5)):
                pass  # not reached: the first chunk is the failure
    texts = [str(e) for e in (info.value, opening.value)] + [repr(info.value)] + [
        "".join(traceback.format_exception(e)) for e in (info.value, opening.value)]
    secret_scanner.collect(*texts)
    assert not secret_scanner.leaky(texts)
    assert mm.budget_backend.open_reservations == 0


@pytest.mark.parametrize("bad", FOREIGN, ids=lambda b: type(b).__name__)
async def test_after_the_first_chunk_it_is_a_mid_stream_error(bad: Any) -> None:
    async with manager(["a ", bad]) as mm:
        with pytest.raises(MidStreamError) as info:
            async with mm.stream(AIRequest.from_prompt("hi", max_tokens=5)) as s:
                async for _ in s:
                    pass
        assert info.value.partial_text == "a "
        texts = [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
        secret_scanner.collect(*texts)
        assert not secret_scanner.leaky(texts)
        assert mm.budget_backend.open_reservations == 0


async def test_the_next_candidate_answers() -> None:
    async with manager([RuntimeError("bug")], second=True) as mm:
        resp = await mm.complete(AIRequest.from_prompt("hi", max_tokens=50))
        async with mm.stream(AIRequest.from_prompt("hi", max_tokens=50)) as s:
            text = "".join([c.text async for c in s])
    assert resp.model == "g/words" and resp.attempts[0].model_id == "w/words"
    assert text == "fine answer"
