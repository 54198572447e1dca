"""Fixtures: the real SmolLM2 model (fetched once into the user's cache), tiny random models
built on the fly, and providers closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from squirrel_models.providers import ModelOverride, ProviderSpec
from squirrel_models_llama_local import LlamaLocalOptions, LlamaLocalProvider, default_model_path

from .tinygguf import build_tiny_gguf

MakeProvider = Callable[..., Awaitable[LlamaLocalProvider]]


@pytest.fixture(scope="session")
def smol_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny random models (``tiny-a``, ``tiny-b``) with a 2,048-token context, and one
    with 256 tokens (``tiny-small``, in its own folder)."""
    d = tmp_path_factory.mktemp("tiny")
    build_tiny_gguf(d / "tiny-a.gguf", n_ctx=2048, seed=0)
    build_tiny_gguf(d / "tiny-b.gguf", n_ctx=2048, seed=1)
    return d


@pytest.fixture(scope="session")
def tiny_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("small") / "tiny-small.gguf", n_ctx=256)


@pytest.fixture
async def make_provider() -> AsyncIterator[MakeProvider]:
    """``await make_provider(name="local", models=(...), **options)``: a listed provider."""
    made: list[LlamaLocalProvider] = []

    async def make(name: str = "local", overrides: tuple[ModelOverride, ...] = (), **options: Any
                   ) -> LlamaLocalProvider:
        p = LlamaLocalProvider(ProviderSpec(name, "llama-local", LlamaLocalOptions(**options), overrides))
        made.append(p)
        await p.list_models()
        return p

    yield make
    for p in made:
        await p.aclose()
