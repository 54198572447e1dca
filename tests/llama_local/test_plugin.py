"""Discovery through the real entry point, and the public API."""

from __future__ import annotations

from importlib.metadata import entry_points

from squirrel_models.plugins import PluginManager
from squirrel_models_llama_local import LlamaLocalOptions


def test_plugin_is_installed() -> None:
    pm = PluginManager()
    types = pm.provider_types()
    assert "llama-local" in types
    assert types["llama-local"].options_type is LlamaLocalOptions
    info = {i.name: i for i in pm.plugins()}["llama-local"]
    assert info.source == "entrypoint"
    assert info.dist == "squirrel-models-llama-local"
    assert {"register_providers", "count_tokens"} <= set(info.hooks)
    assert pm.failures == []


def test_exactly_one_entry_point() -> None:
    ours = [ep for ep in entry_points(group="squirrel_models")
            if ep.dist is not None and ep.dist.name == "squirrel-models-llama-local"]
    assert [(ep.name, ep.value) for ep in ours] == [("llama-local", "squirrel_models_llama_local.plugin")]


def test_public_api() -> None:
    import squirrel_models_llama_local as pkg

    modules = {"annotations", "options", "provider", "runtime", "plugin"}
    assert sorted(pkg.__all__) == sorted(n for n in dir(pkg) if not n.startswith("_") and n not in modules)
