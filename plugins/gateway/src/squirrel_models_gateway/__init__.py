"""squirrel-models-gateway: ``squirrel serve``, an OpenAI-compatible HTTP gateway over
squirrel-models with virtual keys. See docs/gateway.md.

Names are imported on first use: the plugin's entry point (``squirrel_models_gateway.plugin``)
is loaded by every ``ModelManager``, and must not pull in the HTTP server for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from squirrel_models.lazy import lazy_exports

_EXPORTS = {
    "Gateway": "app", "create_app": "app",
    "GatewayConfig": "config", "VirtualKey": "config", "hash_key": "config",
    "load_gateway_config": "config",
    "GatewayError": "errors", "error_for": "errors",
    "GatewayThread": "server", "build": "server", "serve": "server",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from .app import Gateway, create_app
    from .config import GatewayConfig, VirtualKey, hash_key, load_gateway_config
    from .errors import GatewayError, error_for
    from .server import GatewayThread, build, serve
