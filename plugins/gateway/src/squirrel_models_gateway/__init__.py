"""squirrel-models-gateway: ``squirrel serve``, an OpenAI-compatible HTTP gateway over
squirrel-models with virtual keys. See docs/gateway.md.

Names are imported on first use: the plugin's entry point (``squirrel_models_gateway.plugin``)
is loaded by every ``ModelManager``, and must not pull in the HTTP server for that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Gateway": "app", "create_app": "app",
    "GatewayConfig": "config", "VirtualKey": "config", "hash_key": "config",
    "load_gateway_config": "config",
    "GatewayError": "errors", "error_for": "errors",
    "GatewayThread": "server", "build": "server", "serve": "server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'squirrel_models_gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .app import Gateway, create_app
    from .config import GatewayConfig, VirtualKey, hash_key, load_gateway_config
    from .errors import GatewayError, error_for
    from .server import GatewayThread, build, serve
