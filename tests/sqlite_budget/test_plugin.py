"""Discovery through the real entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

from squirrel_models.plugins import PluginManager
from squirrel_models_sqlite_budget import SqliteBudgetOptions


def test_plugin_is_installed() -> None:
    pm = PluginManager()
    backends = pm.budget_backends()
    assert "sqlite" in backends
    assert backends["sqlite"].options_type is SqliteBudgetOptions
    info = {i.name: i for i in pm.plugins()}["sqlite"]
    assert info.source == "entrypoint"
    assert info.dist == "squirrel-models-sqlite-budget"
    assert "register_budget_backends" in info.hooks
    assert pm.failures == []


def test_exactly_one_entry_point() -> None:
    ours = [ep for ep in entry_points(group="squirrel_models")
            if ep.dist is not None and ep.dist.name == "squirrel-models-sqlite-budget"]
    assert [(ep.name, ep.value) for ep in ours] == [("sqlite", "squirrel_models_sqlite_budget.plugin")]


def test_public_api() -> None:
    import squirrel_models_sqlite_budget as pkg

    assert sorted(pkg.__all__) == sorted(n for n in dir(pkg) if not n.startswith("_")
                                         and n not in {"annotations", "backend", "errors",
                                                       "schema", "store", "plugin"})
