"""One Redis connection for a store of this plugin (budget, rate limits, breaker state): the
driver, scripts run by ``EVALSHA``, the key prefix's owner check, errors mapped at one place.

Every call takes a :class:`~squirrel_models.budget.StoreDeadline` (the caller's, from
:func:`~squirrel_models.budget.store_deadline`, capped by the plugin's own timeouts) and maps
redis-py's errors into :mod:`.errors` (:func:`~.errors.map_redis_errors`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs
from squirrel_models.budget import StoreDeadline, store_deadline
from squirrel_models.secrets import RedactingFilter, Secret

from . import scripts as S
from .driver import AsyncDriver, ThreadDriver, make_driver
from .errors import RedisStoreError, RedisUnavailable, UnusableRedis, map_redis_errors
from .options import RedisOptions, check_url

__all__ = ["APPLICATION", "DATA_VERSION", "RedisClient", "text"]

APPLICATION = "squirrel-models"
#: The layout of the keys; a prefix written by a newer version is refused, not modified.
DATA_VERSION = 1


_filtered: set[str] = set()


def _guard_loggers() -> None:
    """Scrub known secrets (the URL, its password) from redis-py's own log records."""
    for name in ("redis", "redis.asyncio"):
        if name not in _filtered:
            logging.getLogger(name).addFilter(RedactingFilter())
            _filtered.add(name)


def text(value: Any) -> str:
    """A reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _memory_settings(reply: Any) -> tuple[int, str]:
    """``maxmemory`` and ``maxmemory_policy`` of an ``INFO memory`` reply (redis-py's asyncio
    client parses it into a dict; the threaded driver's raw reply is its text)."""
    if isinstance(reply, dict):
        fields = {str(k): text(v) for k, v in reply.items()}
    else:
        fields = dict(line.partition(":")[::2] for line in text(reply).splitlines())
    limit = fields.get("maxmemory", "0").strip()
    return (int(limit) if limit.isascii() and limit.isdigit() else 0), fields.get("maxmemory_policy", "").strip()


@attrs.define
class RedisClient:
    """The connection of one store. ``field``: where the options live in the configuration
    (``budget.options``, ``rate_limits.options``), for error messages. ``durable``: the store
    keeps counts that must not vanish (budgets, rate limits), so a server that evicts keys
    when full is refused (:meth:`check`); breaker holds are advisory."""

    options: RedisOptions
    url: Secret | None = None
    field: str = "budget.options"
    durable: bool = True
    _driver: AsyncDriver | ThreadDriver | None = attrs.field(default=None, init=False)
    _opened: bool = attrs.field(default=False, init=False)
    _checked: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        _guard_loggers()
        if self.url is None:
            self.url = Secret.from_env(self.options.url_env, field=f"{self.field}.url_env",
                                       opaque=False)
        check_url(self.url, f"{self.field}.url_env")

    @property
    def prefix(self) -> str:
        return self.options.key_prefix

    def key(self, *parts: str) -> str:
        """A key under this prefix's hash tag: ``{prefix}:part:part``."""
        return ":".join((f"{{{self.options.key_prefix}}}", *parts))

    def deadline(self) -> StoreDeadline:
        """The deadline of a call made now (take it before any cancel shield)."""
        return store_deadline(self.options.connect_timeout_s + self.options.operation_timeout_s)

    def _make_driver(self) -> AsyncDriver | ThreadDriver:
        if self._closed:
            raise RedisStoreError("open", "the store is closed")
        if self._driver is None:
            assert self.url is not None
            o = self.options
            self._driver = make_driver(o.driver, self.url, max_connections=o.max_connections,
                                       connect_timeout=o.connect_timeout_s,
                                       operation_timeout=o.operation_timeout_s)
        return self._driver

    @property
    def driver(self) -> AsyncDriver | ThreadDriver | None:
        return self._driver

    async def execute(self, operation: str, *args: Any, deadline: StoreDeadline | None = None
                      ) -> Any:
        """One raw command, bounded by ``deadline`` (now's if None), errors mapped."""
        deadline = deadline or self.deadline()
        driver = self._make_driver()
        where = f"{self.options.url_env} ({self.field}.url_env)"
        with map_redis_errors(operation, deadline, where):
            if not self._opened:
                await driver.open()  # makes the pool: no I/O yet
                self._opened = True
            return await driver.execute(*args, deadline=deadline)

    async def eval(self, operation: str, script: S.Script, keys: Sequence[str],
                   args: Sequence[Any], deadline: StoreDeadline | None = None) -> Any:
        """Run ``script`` (``EVALSHA``; ``EVAL`` once if the server does not know it yet)."""
        deadline = deadline or self.deadline()
        if not self._checked and script is not S.META:
            await self.check(deadline)
        try:
            return await self.execute(operation, "EVALSHA", script.sha, len(keys), *keys, *args,
                                      deadline=deadline)
        except RedisStoreError as exc:
            if "NOSCRIPT" not in exc.detail and "NoScriptError" not in exc.detail:
                raise
        return await self.execute(operation, "EVAL", script.body, len(keys), *keys, *args,
                                  deadline=deadline)

    async def check(self, deadline: StoreDeadline | None = None) -> None:
        """Claim the key prefix, or refuse one that another application (or a newer version
        of this plugin) holds; for a ``durable`` store, refuse a server that evicts any key
        when full (:meth:`_check_eviction`)."""
        deadline = deadline or self.deadline()
        if self.durable:
            await self._check_eviction(deadline)
        app, version = await self.eval("open", S.META, [self.key("meta")],
                                       [APPLICATION, DATA_VERSION], deadline)
        if text(app) != APPLICATION:
            raise UnusableRedis(self.options.key_prefix, f"belongs to {text(app)!r}",
                                field=f"{self.field}.key_prefix")
        if int(version) > DATA_VERSION:
            raise UnusableRedis(self.options.key_prefix,
                                f"holds data version {int(version)}, newer than this plugin's "
                                f"{DATA_VERSION}: upgrade squirrel-models-redis",
                                field=f"{self.field}.key_prefix")
        self._checked = True

    async def _check_eviction(self, deadline: StoreDeadline) -> None:
        """A server with ``maxmemory`` and an ``allkeys-*`` policy (a cache's usual settings)
        drops any key when it is full: committed spend, a window's admissions, the leases.
        Nothing says so; a budget would start again from zero and overspend. Refused before
        the prefix is claimed. ``noeviction`` and the ``volatile-*`` policies leave this
        plugin's keys alone (none has a ttl). A server that does not let this client read
        ``INFO`` (an ACL, a proxy) cannot be checked and is used as before."""
        try:
            reply = await self.execute("open", "INFO", "memory", deadline=deadline)
        except RedisUnavailable:
            raise
        except RedisStoreError:
            return
        limit, policy = _memory_settings(reply)
        if limit > 0 and policy.startswith("allkeys-"):
            raise UnusableRedis(
                self.options.key_prefix,
                f"the Redis server of {self.options.url_env} evicts keys when it is full "
                f"(maxmemory-policy {policy}, maxmemory {limit:,} bytes), so it could drop "
                "committed spend, rate-limit counts and leases at any moment, silently: set "
                "its maxmemory-policy to noeviction (or a volatile-* policy), or give these "
                "stores a Redis of their own", field=f"{self.field}.url_env")

    async def server_time(self) -> float:
        sec, usec = await self.execute("time", "TIME")
        return int(sec) + int(usec) / 1e6

    async def aclose(self) -> None:
        self._closed = True
        driver, self._driver = self._driver, None
        if driver is not None and self._opened:
            await driver.close()
