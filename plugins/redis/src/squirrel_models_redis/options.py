"""Options of the Redis plugin (``[budget.options]`` of ``backend = "redis"``), and the URL as
a Secret."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import Secret, redact
from squirrel_models.sliceoptions import SliceFields
from squirrel_models.sqlbudget import one_of, positive, retention_days

__all__ = ["ON_UNAVAILABLE", "RedisOptions", "check_unused", "check_url"]

ON_UNAVAILABLE = ("fail_closed", "fail_open")
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _env_name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value or "://" in value or "=" in value:
        raise ConfigError("must name the environment variable that holds the Redis URL "
                          "(never the URL itself)", field=attribute.name)


def _prefix(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _PREFIX.match(value):
        raise ConfigError("must be 1 to 64 letters, digits or _ . : - (no braces: the plugin "
                          f"adds its own hash tag), got {value!r}", field=attribute.name)


def _connections(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ConfigError(f"must be a whole number from 1 to 10000, got {value!r}",
                          field=attribute.name)


@attrs.frozen
class RedisOptions(SliceFields):
    """Options of the ``redis`` budget backend (and of the plugin's other stores).

    - ``url_env``: the environment variable holding the Redis URL (``redis://``,
      ``rediss://`` or ``unix://``, with its password if any); read at start-up into a
      :class:`~squirrel_models.secrets.Secret`, never logged.
    - ``key_prefix``: every key lives under ``{<key_prefix>}:`` (one hash tag, so one
      Redis Cluster slot: a script may touch any of them). One prefix per independent budget.
    - ``max_connections``: the connection pool per process.
    - ``connect_timeout_s``: how long to wait for a new connection.
    - ``operation_timeout_s``: the longest one command may take (less when the request's
      deadline comes first).
    - ``on_unavailable``: ``fail_closed`` (default): Redis unreachable means budgeted
      requests are refused with a typed error (``RedisUnavailable``) within their deadline;
      ``fail_open``: a logged warning, and this process enforces the same limits on its own
      (in memory) until Redis answers again.
    - ``unavailable_retry_s``: with ``fail_open``, how long to stay on the local limits
      after a failure before trying Redis again.
    - ``expired_retention_s``: how long an expired lease is remembered so a late settle
      still commits its spend.
    - ``ledger_retention_days``: ledger rows older than this are pruned by ``reconcile``.
    - ``driver``: ``auto`` (redis.asyncio under asyncio, the blocking client in worker
      threads otherwise, as under trio), ``async`` or ``threads``.
    - ``slices`` (default false; the budget only): serve reservations from leased slices of
      each budget's room (:mod:`squirrel_models.slices`), flushed every ``slice_flush_s``
      seconds (0.2), leases of ``slice_lease_s`` seconds (30; a dead process's slice is
      charged in full after it), each slice room for ``slice_requests`` worst cases (64)
      but at most ``slice_fraction`` (0.25) of the room left.
    """

    url_env: str = attrs.field(default="SQUIRREL_REDIS_URL", validator=_env_name)
    key_prefix: str = attrs.field(default="squirrel", validator=_prefix)
    max_connections: int = attrs.field(default=10, validator=_connections)
    connect_timeout_s: float = attrs.field(default=2.0, validator=positive)
    operation_timeout_s: float = attrs.field(default=2.0, validator=positive)
    on_unavailable: str = attrs.field(default="fail_closed", validator=one_of(*ON_UNAVAILABLE))
    unavailable_retry_s: float = attrs.field(default=1.0, validator=positive)
    expired_retention_s: float = attrs.field(default=7 * 86400.0, validator=positive)
    ledger_retention_days: int | None = attrs.field(default=None, validator=retention_days)
    driver: str = attrs.field(default="auto", validator=one_of("auto", "async", "threads"))


def check_unused(options: RedisOptions, field: str, unused: dict[str, str]) -> None:
    """Refuse, naming ``field.<option>``, an option of ``unused`` (option: why) set to other
    than its default: a store it does nothing for would take it silently, while the
    configuration seemed to ask for it."""
    defaults = RedisOptions()
    for name, why in unused.items():
        if getattr(options, name) != getattr(defaults, name):
            raise ConfigError(f"has no effect here: {why}", field=f"{field}.{name}")


#: Settings the plugin makes from its options: redis-py lets a URL's query override them
#: (``from_url``), so the same setting there would silently replace the option.
_OWNED = {"max_connections": "max_connections", "timeout": "connect_timeout_s",
          "socket_connect_timeout": "connect_timeout_s", "socket_timeout": "operation_timeout_s"}
_DB_PATH = re.compile(r"/?[0-9]*")
_UNKNOWN = re.compile(r"unexpected keyword argument '(\w+)'")


def check_url(url: Secret, field: str) -> Secret:
    """``url`` if redis-py can use it as this plugin's Redis URL, else a :class:`ConfigError`
    on ``field`` that never shows the URL. Its password (from the userinfo or ``?password=``,
    decoded) is registered as a secret of its own."""
    import redis.asyncio.connection as async_connection
    from redis import RedisError
    from redis import connection as sync_connection

    raw = url.reveal()
    env = "the URL"
    scheme = raw.partition("://")[0] if "://" in raw else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"must be a redis://, rediss:// or unix:// URL, got scheme "
                          f"{scheme or '(none)'!r}", field=field)
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (reading it checks it)
        kwargs = sync_connection.parse_url(raw)
    except ValueError as exc:
        # The port's error quotes it, and a password with an unencoded / ? # @ ends up there.
        why = str(exc) if str(exc).startswith("Invalid value for") else \
            "its port is not a whole number from 0 to 65535, or a password holds / ? # or @ " \
            "without percent-encoding"
        raise ConfigError(f"is not a valid Redis URL: {redact(why)}", field=field) from None
    password = kwargs.get("password")
    if isinstance(password, str) and password:
        Secret(password)
    if scheme == "unix" and not kwargs.get("path"):
        raise ConfigError("a unix:// URL must name the socket's path (unix:///run/redis.sock)",
                          field=field)
    if scheme != "unix" and not _DB_PATH.fullmatch(parts.path):
        raise ConfigError(f"{env}'s path must be the database number (/0) or nothing",
                          field=field)
    for name, option in _OWNED.items():
        if name in kwargs:
            raise ConfigError(f"{env} sets {name} in its query string, which would override "
                              f"{field.rpartition('.')[0]}.{option}: set that option instead",
                              field=field)
    for module in (sync_connection, async_connection):
        args = dict(kwargs)
        cls = args.pop("connection_class", module.Connection)
        cls = getattr(module, cls.__name__, cls)  # the same class of this module
        try:
            cls(**args)  # no I/O: checks the names and values of the URL's settings
        except (TypeError, ValueError, RedisError) as exc:
            unknown = _UNKNOWN.search(str(exc))
            why = (f"its query string sets {unknown.group(1)!r}, which redis-py does not know"
                   if unknown else redact(str(exc)))
            raise ConfigError(f"{env} is not usable: {why}", field=field) from None
    return url
