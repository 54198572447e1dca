"""Broken plugins next to the real ones: each is skipped with a logged reason and the rest keep
serving requests; strict mode turns each into an error. Plugins are real distributions with
entry points on sys.path (tests/core/dists.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import AIRequest, ModelManager, ModelRequirements, PluginError
from squirrel_models.plugins import PluginManager

from ..core.dists import install, make_dist
from ..support.faulty_server import FaultyServer
from . import compose
from .conftest import CANARY, figure

pytestmark = pytest.mark.anyio

BROKEN = {
    "raises-on-import": "raise RuntimeError('this plugin is broken')\n",
    "hook-raises": """
from squirrel_models import hookimpl

@hookimpl
def register_providers():
    raise ValueError('exploded inside the hook')
""",
    "wrong-signature": """
from squirrel_models import hookimpl

@hookimpl
def register_providers(no_such_argument):
    return []
""",
}
DUP = """
from squirrel_models import ModelCard, ProviderType, hookimpl
from squirrel_models.testing import ScriptedProvider

def _factory(spec):
    # Every instance lists the same model id, "one/m".
    return ScriptedProvider(spec.name, [ModelCard.for_provider("one", "m", provider_type="scripted")])

@hookimpl
def register_providers():
    return [ProviderType("{name}", _factory)]
"""


@pytest.fixture
def broken_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for var in ("SQUIRREL_LOAD_PLUGINS", "SQUIRREL_DISABLE_PLUGINS", "SQUIRREL_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    sources = {**BROKEN, "dup-a": DUP.format(name="dup-a"), "dup-b": DUP.format(name="dup-b")}
    for name, source in sources.items():
        mod = "sqrel_" + name.replace("-", "_")
        install(monkeypatch, make_dist(tmp_path / name, f"sqrel-{name}", entry_points={name: mod},
                                       modules={mod: source}))
    return list(BROKEN)


def _config(faulty: FaultyServer, tmp_path: Path) -> dict[str, Any]:
    cfg = compose.config(faulty, str(tmp_path / "p.sqlite3"))
    cfg["providers"] += [{"name": "one", "type": "dup-a"}, {"name": "two", "type": "dup-b"}]
    return cfg


async def test_broken_plugins_are_skipped_and_logged(broken_dists: list[str], faulty: FaultyServer,
                                                     canary_env: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pm = PluginManager()
    async with ModelManager(_config(faulty, tmp_path), plugins=pm) as mm:
        resp = await mm.complete(AIRequest.from_prompt("still working?", max_tokens=8),
                                 ModelRequirements(models={"gamma/ok"}))
        assert mm.models["one/m"].provider == "one"  # the first listing is kept
    assert resp.text and resp.model == "gamma/ok"
    failed = {name for name, _ in pm.failures}
    assert set(broken_dists) <= failed, pm.failures
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for name in broken_dists:
        assert any(name in m and "skipped" in m for m in messages), (name, messages)
    assert any("two" in m and "one/m" in m for m in messages), messages  # the duplicate, logged
    assert not [m for m in messages if CANARY in m]
    figure("plugins", broken_plugins=len(broken_dists), duplicate_model_ids=1,
           skipped_and_logged=len(failed) + 1, requests_served_meanwhile=1)


@pytest.mark.parametrize("name", [*BROKEN, "duplicate-model-id"])
async def test_strict_mode_turns_each_into_an_error(broken_dists: list[str], name: str, faulty: FaultyServer,
                                                    canary_env: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    others = [n for n in BROKEN if n != name]
    monkeypatch.setenv("SQUIRREL_DISABLE_PLUGINS", ",".join(others))
    cfg = {**_config(faulty, tmp_path), "strict_plugins": True}
    with pytest.raises(PluginError) as info:
        async with ModelManager(cfg) as mm:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=8))
    assert (name if name in BROKEN else "one/m") in str(info.value)
    assert faulty.requests == 0
    figure("plugins", strict_errors=1)
