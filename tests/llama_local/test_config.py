"""Model cards come from the files' own metadata; bad configuration fails at start-up and
names the field."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from squirrel_models.errors import ConfigError
from squirrel_models.manager import ModelManager
from squirrel_models.providers import ModelOverride
from squirrel_models.types import Price

from .conftest import MakeProvider

pytestmark = pytest.mark.anyio


def _config(**options: object) -> dict[str, object]:
    return {"providers": [{"name": "local", "type": "llama-local", "options": options}]}


async def test_card_from_smollm2_metadata(make_provider: MakeProvider, smol_path: Path) -> None:
    p = await make_provider(models=(str(smol_path),))
    (card,) = await p.list_models()
    assert card.id == "local/SmolLM2-135M-Instruct.Q4_1"
    assert card.provider_type == "llama-local"
    assert card.context_window == 4096  # trained 8,192, capped by default
    assert card.price == Price.free() and card.price.input == Decimal(0)
    assert {"chat", "completion"} <= card.capabilities
    assert {"streaming", "system_prompt"} <= card.features
    meta = card.metadata
    assert meta["architecture"] == "llama"
    assert meta["quantization"] == "Q4_1"
    assert meta["trained_context_length"] == 8192
    assert 100e6 < meta["parameter_count"] < 200e6
    assert p.loaded_models() == []  # listing does not load the weights


async def test_folder_n_ctx_and_overrides(make_provider: MakeProvider, tiny_dir: Path) -> None:
    p = await make_provider(folder=str(tiny_dir), n_ctx=512,
                            overrides=(ModelOverride("tiny-b", quality=0.9, tags=frozenset({"x"})),))
    cards = {c.model: c for c in await p.list_models()}
    assert sorted(cards) == ["tiny-a", "tiny-b"]
    assert all(c.context_window == 512 for c in cards.values())
    assert cards["tiny-b"].quality == 0.9 and cards["tiny-b"].tags == {"x"}
    assert cards["tiny-a"].metadata["parameter_count"] > 0


def test_missing_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(models=[str(tmp_path / "nope.gguf")]))
    assert "providers[0].options.models[0]" in str(info.value)
    assert "nope.gguf" in str(info.value)


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.mkdir(), "is a folder, not a GGUF file"),
    (lambda p: os.mkfifo(p), "is not a regular file (never read)"),
    (lambda p: p.symlink_to(p), "cannot be opened: Too many levels of symbolic links"),
    (lambda p: None, "no such GGUF file"),
], ids=["folder", "fifo", "link-loop", "missing"])
def test_what_is_there_instead_of_a_model_file_is_said_on_one_line(tmp_path: Path, make: Any, says: str) -> None:
    """A folder or a link loop read as "no such GGUF file"; a path's line break split the
    one-line error."""
    path = tmp_path / "odd\nname.gguf"
    make(path)
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(models=[str(path)]))
    assert info.value.field == "providers[0].options.models[0]"
    assert says in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_not_gguf_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(models=[str(bad)]))
    assert info.value.field == "providers[0].options.models[0]"
    assert "not a GGUF file" in str(info.value)


def test_truncated_gguf_is_refused(tmp_path: Path, tiny_small: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_small.read_bytes()[:5000])
    with pytest.raises(ConfigError, match="truncated"):
        ModelManager(_config(models=[str(cut)]))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(folder=str(tmp_path)))
    assert info.value.field == "providers[0].options.folder"


@pytest.mark.parametrize(("key", "value"), [("n_threads", 0), ("n_ctx", 4), ("idle_unload_s", 0),
                                            ("max_queue", -1), ("unknown_option", 1)])
def test_bad_options_name_the_field(key: str, value: object, tiny_small: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(models=[str(tiny_small)], **{key: value}))
    assert f"providers[0].options.{key}" in str(info.value)


async def test_override_of_unknown_model(tiny_small: Path) -> None:
    cfg = _config(models=[str(tiny_small)])
    cfg["providers"][0]["models"] = [{"name": "nope", "quality": 0.5}]  # type: ignore[index]
    with pytest.raises(ConfigError, match="no model file named nope"):
        async with ModelManager(cfg):
            pass


async def test_relative_model_paths_are_relative_to_the_config_file(
        tmp_path: Path, tiny_small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same configuration file finds the same model from any working directory."""
    import shutil

    from squirrel_models.config import load_toml

    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    shutil.copy(tiny_small, project / "models" / "tiny.gguf")
    (project / "squirrel.toml").write_text(
        '[[providers]]\nname = "local"\ntype = "llama-local"\n'
        'options = { models = ["models/tiny.gguf"], folder = "models" }\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mm = ModelManager(load_toml(project / "squirrel.toml"))
    options = mm.providers["local"].options  # type: ignore[attr-defined]
    assert options.models == (str(project.resolve() / "models" / "tiny.gguf"),)
    assert options.folder == str(project.resolve() / "models")
    await mm.aclose()
