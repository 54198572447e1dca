"""Discovery through the real entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

from squirrel_models.plugins import PluginManager
from squirrel_models_postgres_budget import PostgresBudgetOptions


def test_plugin_is_installed() -> None:
    pm = PluginManager()
    backends = pm.budget_backends()
    assert "postgres" in backends
    assert backends["postgres"].options_type is PostgresBudgetOptions
    info = {i.name: i for i in pm.plugins()}["postgres"]
    assert info.source == "entrypoint"
    assert info.dist == "squirrel-models-postgres-budget"
    assert "register_budget_backends" in info.hooks
    assert pm.failures == []


def test_exactly_one_entry_point() -> None:
    ours = [ep for ep in entry_points(group="squirrel_models")
            if ep.dist is not None and ep.dist.name == "squirrel-models-postgres-budget"]
    assert [(ep.name, ep.value) for ep in ours] == [("postgres", "squirrel_models_postgres_budget.plugin")]


def test_public_api() -> None:
    import squirrel_models_postgres_budget as pkg

    assert sorted(pkg.__all__) == sorted(n for n in dir(pkg) if not n.startswith("_")
                                         and n not in {"annotations", "backend", "errors", "driver",
                                                       "options", "schema", "plugin"})
