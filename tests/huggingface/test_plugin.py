"""Discovery through the real entry point, configuration errors, the public API, import cost."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import squirrel_models_huggingface
from squirrel_models import ConfigError, ModelManager, PluginManager
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from .conftest import CANARY, CANARY_ENV


def test_plugin_is_installed() -> None:
    ours = [ep for ep in entry_points(group="squirrel_models")
            if ep.dist is not None and ep.dist.name == "squirrel-models-huggingface"]
    assert [ep.name for ep in ours] == ["huggingface"]
    pm = PluginManager(strict=True)
    assert "huggingface" in pm.provider_types()
    info = {p.name: p for p in pm.plugins()}["huggingface"]
    assert info.source == "entrypoint"
    assert set(info.hooks) == {"register_providers", "count_tokens"}


def test_public_api() -> None:
    assert sorted(squirrel_models_huggingface.__all__) == ["HuggingFaceOptions", "HuggingFaceProvider"]


def test_import_is_light() -> None:
    """The plugin loads with every squirrel-models start: huggingface_hub, transformers and torch
    must wait until a provider needs them."""
    code = ("import sys, squirrel_models_huggingface.plugin, squirrel_models_huggingface; "
            "print(sorted(m for m in ('huggingface_hub', 'transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _config(**options: object) -> dict[str, object]:
    return {"providers": [{"name": "hf", "type": "huggingface", "options": options,
                           "models": [{"name": "meta-llama/Llama-3.1-8B-Instruct"}]}]}


@pytest.mark.parametrize(("options", "field"), [
    ({"timeout": -1}, "providers[0].options.timeout"),
    ({"base_url": "ftp://x"}, "providers[0].options.base_url"),
    ({"base_url": "https://user:pw@host/v1"}, "providers[0].options.base_url"),
    ({"nope": 1}, "providers[0].options.nope"),
    ({"headers": {"Authorization": "Bearer x"}}, "providers[0].options.headers.Authorization"),
    ({"base_url": "http://127.0.0.1:9/v1", "model_path": "/m"}, "providers[0].options.model_path"),
    ({"base_url": "http://127.0.0.1:9/v1", "inference_provider": "together"},
     "providers[0].options.inference_provider"),
    ({"model_path": "/no/such/folder"}, "providers[0].options.model_path"),
    ({"dtype": "int3"}, "providers[0].options.dtype"),
    ({"token_env": ""}, "providers[0].options.token_env"),
    # sent as a header: accepted, then every request failed in the HTTP client
    ({"bill_to": "my-org\r\n"}, "providers[0].options.bill_to"),
    ({"bill_to": "caf\u00e9"}, "providers[0].options.bill_to"),
])
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(**options))
    assert info.value.field == field, str(info.value)


def test_a_remote_provider_needs_a_model() -> None:
    cfg = {"providers": [{"name": "hf", "type": "huggingface", "options": {"base_url": "http://127.0.0.1:9/v1"}}]}
    with pytest.raises(ConfigError) as info:
        ModelManager(cfg)
    assert info.value.field == "providers[0].options.model"


def test_missing_token_variable_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQUIRREL_TEST_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(token_env="SQUIRREL_TEST_NO_SUCH_TOKEN"))
    assert info.value.field == "providers[0].options.token_env"
    assert "SQUIRREL_TEST_NO_SUCH_TOKEN" in str(info.value)


def test_token_is_read_into_a_secret(canary_env: str) -> None:
    p = HuggingFaceProvider("hf", HuggingFaceOptions(token_env=canary_env, model="m"))
    assert p.remote is not None and p.remote._token is not None
    assert p.remote._token.reveal() == CANARY
    assert CANARY not in repr(p) + str(p) + repr(p.options) + repr(p.remote) + repr(p.remote._token)


def test_manager_builds_each_kind(canary_env: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    cfg = {"providers": [
        {"name": "hub", "type": "huggingface", "options": {"token_env": CANARY_ENV, "model": "org/model",
                                                           "inference_provider": "together"}},
        {"name": "tgi", "type": "huggingface", "options": {"base_url": "http://127.0.0.1:9/v1"},
         "models": [{"name": "tgi"}]},
        {"name": "loc", "type": "huggingface", "options": {"model_path": str(tmp_path)}},
    ]}
    mm = ModelManager(cfg)
    modes = {n: p.options.mode for n, p in mm.providers.items()}  # type: ignore[attr-defined]
    assert modes == {"hub": "hub", "tgi": "server", "loc": "local"}
    assert CANARY not in repr(mm.providers)
