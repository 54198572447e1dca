"""Built-in plugins: ordinary plugins registered with the same call as third-party ones.

Loaded after entry-point plugins, in this order.
"""

from __future__ import annotations

DEFAULT_PLUGINS: tuple[str, ...] = (
    "squirrel_models.builtins.scoring",
    "squirrel_models.builtins.fallback",
    "squirrel_models.builtins.memory_budget",
    "squirrel_models.builtins.memory_ratelimit",
    "squirrel_models.builtins.simple",
)
