"""A plugin ``squirrel plugin new my-KIND --kind KIND`` wrote, used as its README configures
it, in a ModelManager beside the scripted provider (run by tests/core/test_scaffold.py in a
process of its own, the plugin's entry point on its path): ``python scaffolded.py KIND
FOLDER``. The provider answers; the budget backend holds the spend; the scoring rule scores
the larger window higher; the fallback strategy, alone in the chain, moves on after a 503 and
not after a 401; the rate-limit store counts the request and its settled tokens; the token
counter counts the prompts of the models the README tags, exactly. Prints ``KIND ok MODEL``;
a failed check raises."""

import asyncio
import re
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from squirrel_models import AIRequest, AuthenticationError, ModelManager, ServerError
from squirrel_models.budget import charges_for
from squirrel_models.plugins import PluginManager
from squirrel_models.ratelimit import RateCharge
from squirrel_models.testing import Fail, Reply, ScriptedPlugin

kind, root = sys.argv[1], Path(sys.argv[2])
(block,) = re.findall(r"```toml\n(.*?)```", (root / "README.md").read_text(), re.S)
config = tomllib.loads(block)
name = f"my-{kind}"
price = {"input": 1, "output": 2}
if kind == "tokens":  # the README's provider, served here by the scripted one (no server to call)
    (entry,) = config["providers"]
    entry.update(type="scripted", options={"models": [m["name"] for m in entry["models"]]})
    for m in entry["models"]:
        m["price"] = price
elif kind != "provider":
    config.setdefault("providers", []).append(
        {"name": "p", "type": "scripted", "options": {"models": ["a", "b"]},
         "models": [{"name": "a", "price": price, "context_window": 8192, "quality": 0.9},
                    {"name": "b", "price": price, "context_window": 128_000, "quality": 0.1}]})


async def main() -> None:
    pm = PluginManager()
    pm.register(ScriptedPlugin(), "scripted")
    async with ModelManager(config, plugins=pm) as manager:
        if kind == "provider":
            response = await manager.complete(AIRequest.from_prompt("hello there"))
            assert response.text.startswith("echo: hello there"), response.text
        elif kind == "budget":
            response = await manager.complete(AIRequest.from_prompt("hi", max_tokens=10))
            backend = manager.budget_backend
            assert type(backend).__module__ == "squirrel_models_my_budget.budget", backend
            charges = charges_for(manager.config.budget.limits, provider="p", model_id=response.model,
                                  budget_key=None, now=datetime.now(UTC))
            (usage,) = await backend.usage(charges)
            assert usage.committed == response.cost > 0 and usage.reserved == 0, (usage, response.cost)
        elif kind == "scoring":
            response = await manager.complete(AIRequest.from_prompt("hi"))
            scores = {c.model_id: c.scores[name] for c in response.decision.candidates}
            assert scores["p/a"] < scores["p/b"], scores  # the larger window scores higher
        elif kind == "fallback":
            scripted = manager.providers["p"]
            scripted.script("a", Fail(ServerError("down", status_code=503)), Fail(ServerError("down", status_code=503)))
            scripted.script("b", Reply("from b"))
            response = await manager.complete(AIRequest.from_prompt("hi"))
            assert (response.model, response.text) == ("p/b", "from b"), response
        elif kind == "ratelimit":
            response = await manager.complete(AIRequest.from_prompt("hi", max_tokens=10))
            store = manager.limiter.store
            assert type(store).__module__ == "squirrel_models_my_ratelimit.ratelimit", store
            rpm, tpm = RateCharge("global", "rpm", 60), RateCharge("global", "tpm", 100_000)
            (requests, tokens) = await store.usage([rpm, tpm])
            assert (requests.used, requests.reserved) == (1, 0), requests
            assert 0 < tokens.used <= 100_000 and tokens.reserved == 0, tokens  # settled
        elif kind == "tokens":
            request = AIRequest.from_prompt("hello there")
            response = await manager.complete(request)
            count = manager.tokens.counter(response.decision.chosen.card, request, None)
            assert count is not None and count.exact and count.method == f"{name} tokenizer", count
    if kind == "fallback":  # alone in the chain, it decides: a 503 moves on, a 401 does not
        config["fallback"]["strategies"] = [name]
        async with ModelManager(config, plugins=pm) as manager:
            scripted = manager.providers["p"]
            scripted.script("a", Fail(ServerError("down", status_code=503)),
                            Fail(AuthenticationError("bad key", status_code=401)))
            response = await manager.complete(AIRequest.from_prompt("hi"))
            assert [a.outcome for a in response.attempts] == ["error", "ok"] and response.model == "p/b"
            try:
                await manager.complete(AIRequest.from_prompt("hi"))
            except AuthenticationError:
                pass
            else:
                raise AssertionError("a 401 was not the strategy's to handle")
    print(kind, "ok", response.model)


asyncio.run(main())
