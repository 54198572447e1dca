"""``[gateway]``: where the gateway listens, its virtual keys, model aliases and limits.

Read from the ``gateway`` table of the squirrel-models configuration with the core's one
converter (:func:`squirrel_models.config.structure`), so a bad field fails at start-up with a
:class:`~squirrel_models.errors.ConfigError` naming it (``gateway.keys[1].sha256``).

A virtual key is never held in plain text by the configuration: ``sha256`` is the hex SHA-256
digest of the bearer token (``squirrel hash-key`` prints it), or ``key_env`` names an
environment variable holding the token, which is hashed when the configuration is read and
not kept.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs
from squirrel_models.config import structure
from squirrel_models.errors import ConfigError, shown
from squirrel_models.fieldchecks import budget_key_problem
from squirrel_models.secrets import Secret

__all__ = ["GatewayConfig", "VirtualKey", "hash_key", "load_gateway_config"]

_HEX = re.compile(r"[0-9a-f]{64}")
_ENV = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
#: The ``model`` that asks the gateway to choose.
AUTO = "auto"


def hash_key(token: str) -> str:
    """The hex SHA-256 digest a virtual key is configured by (``sha256 = "..."``)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _port(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise ConfigError(f"must be a TCP port (0..65535; 0 picks a free one), got {value!r}",
                          field=attribute.name)


def _host(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # An empty host binds every interface (the socket's INADDR_ANY) while the gateway
    # announced "http://:8080/v1": a gateway meant for this machine served the network.
    if not (isinstance(value, str) and value and len(value) <= 253 and value.isprintable()
            and not any(c.isspace() for c in value)):
        raise ConfigError("must be an address or host name to listen on (0.0.0.0 for every "
                          f"IPv4 interface, :: for every IPv6 one), got {shown(value)}",
                          field=attribute.name)


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"must be a finite number > 0, got {value!r}", field=attribute.name)


def _limit(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 30:
        raise ConfigError(f"must be a whole number in 1..{1 << 30}, got {value!r}", field=attribute.name)


@attrs.frozen(repr=False)
class VirtualKey:
    """One ``[[gateway.keys]]`` entry: a bearer token (by its hash), the budget key its
    requests are charged to, and the models it may use.

    ``name`` labels the key in logs and metrics (never the token). ``budget_key`` defaults to
    ``name``: budgets limit it with ``[[budget.limits]] scope = "key:<budget_key>"``.
    ``models`` (ids, aliases or ``auto``) limits what it may ask for; unset: everything.
    ``max_request_cost`` caps each request's worst case (USD). ``revoked = true`` refuses it
    (401) while keeping the entry.
    """

    name: str
    sha256: str | None = None
    key_env: str | None = None
    budget_key: str | None = None
    models: frozenset[str] | None = None
    max_request_cost: Decimal | None = None
    revoked: bool = False

    def __attrs_post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError("must be 1 to 64 letters, digits or _.:@-", field="name")
        if (self.sha256 is None) == (self.key_env is None):
            raise ConfigError("give exactly one of sha256 (the key's hex SHA-256 digest: "
                              "squirrel hash-key prints it) and key_env", field="sha256")
        if self.sha256 is not None and not _HEX.fullmatch(self.sha256):
            # Never echoed: a plain key pasted here by mistake must not reach a log.
            raise ConfigError("must be 64 lowercase hex digits (the key's SHA-256, not the key "
                              "itself: squirrel hash-key prints it); the value is not shown",
                              field="sha256")
        if self.key_env is not None:
            if not _ENV.fullmatch(self.key_env):
                raise ConfigError("must be an environment variable name (A-Z, 0-9, _)", field="key_env")
            token = os.environ.get(self.key_env)
            if not token:
                raise ConfigError(f"environment variable {self.key_env} is not set or empty",
                                  field="key_env")
            if token != token.strip() or not token.isprintable():
                raise ConfigError(f"environment variable {self.key_env} holds whitespace or control "
                                  "characters (the value is not shown)", field="key_env")
            # Hashed now; the plain token is not kept anywhere in the configuration, and is
            # registered as a secret, so no output shows it (a client sending it as a model).
            Secret(token)
            object.__setattr__(self, "sha256", hash_key(token))
        if self.budget_key is not None and (why := budget_key_problem(self.budget_key)) is not None:
            raise ConfigError(why, field="budget_key")
        if self.max_request_cost is not None and not (
                self.max_request_cost.is_finite() and self.max_request_cost >= 0):
            raise ConfigError("must be an amount >= 0", field="max_request_cost")

    @property
    def budget_scope_key(self) -> str:
        return self.budget_key or self.name

    def __repr__(self) -> str:
        return f"VirtualKey(name={self.name!r}, budget_key={self.budget_scope_key!r}, revoked={self.revoked})"


@attrs.frozen
class GatewayConfig:
    """``[gateway]``: see docs/configuration.md."""

    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=8080, validator=_port)
    keys: tuple[VirtualKey, ...] = ()
    allow_anonymous: bool = False
    anonymous_budget_key: str | None = None
    aliases: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    passthrough: tuple[str, ...] = ()
    max_body_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_limit)
    shutdown_timeout: float = attrs.field(default=30.0, validator=_positive)
    header_timeout: float = attrs.field(default=10.0, validator=_positive)
    metrics: bool = True
    access_log: bool = False

    def __attrs_post_init__(self) -> None:
        from squirrel_models.openai_format import why_not_passable

        for i, name in enumerate(self.passthrough):
            if (why := why_not_passable(name)) is not None:
                # Checked here, not per request: it would refuse every request with a 400
                # that blames the client for the configuration.
                raise ConfigError(f"{shown(name)} cannot be passed through: {why} (fields such "
                                  "as logit_bias can)", field=f"passthrough[{i}]")
        if self.anonymous_budget_key is not None and (
                why := budget_key_problem(self.anonymous_budget_key)) is not None:
            raise ConfigError(why, field="anonymous_budget_key")
        if not self.keys and not self.allow_anonymous:
            raise ConfigError("no virtual keys: add [[gateway.keys]], or set allow_anonymous = "
                              "true to serve without keys", field="keys")
        names: set[str] = set()
        digests: set[str | None] = set()
        for i, k in enumerate(self.keys):
            if k.name in names:
                raise ConfigError(f"duplicate key name {k.name!r}", field=f"keys[{i}].name")
            if k.sha256 in digests:
                raise ConfigError("the same key is configured twice", field=f"keys[{i}].sha256")
            names.add(k.name)
            digests.add(k.sha256)
        for name, targets in self.aliases.items():
            if name == AUTO or "/" in name or not name:
                raise ConfigError("an alias is a name without '/', and not 'auto'",
                                  field=f"aliases.{name}")
            if not targets:
                raise ConfigError("names no model", field=f"aliases.{name}")


def load_gateway_config(table: Mapping[str, Any]) -> GatewayConfig:
    """The :class:`GatewayConfig` of the ``[gateway]`` table (an alias may be one id, a string,
    or a list of ids: a group)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"expected a table, got {type(table).__name__}", field="gateway")
    data = dict(table)
    aliases = data.get("aliases")
    if isinstance(aliases, Mapping):
        data["aliases"] = {k: [v] if isinstance(v, str) else v for k, v in aliases.items()}
    return structure(data, GatewayConfig, field="gateway")
