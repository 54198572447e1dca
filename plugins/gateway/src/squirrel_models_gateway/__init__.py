"""squirrel-models-gateway: ``squirrel serve``, an OpenAI-compatible HTTP gateway over
squirrel-models with virtual keys. See docs/gateway.md."""

from __future__ import annotations

from .app import Gateway, create_app
from .config import GatewayConfig, VirtualKey, hash_key, load_gateway_config
from .errors import GatewayError, error_for
from .server import GatewayThread, build, serve

__all__ = ["Gateway", "GatewayConfig", "GatewayError", "GatewayThread", "VirtualKey", "build",
           "create_app", "error_for", "hash_key", "load_gateway_config", "serve"]
