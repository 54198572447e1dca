"""``[budget.options]`` of ``backend = "postgres"``, and the connection string as a Secret."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import attrs
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import RedactingFilter, Secret
from squirrel_models.sliceoptions import SliceFields
from squirrel_models.sqlbudget import one_of, positive, retention_days

from .errors import scrub
from .schema import check_schema_name

__all__ = ["PostgresBudgetOptions", "check_params", "connection_string"]


def _schema(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        check_schema_name(value)
    except ValueError as exc:
        raise ConfigError(f"{exc}, got {value!r}", field=attribute.name) from None


def _env_name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or "://" in value or "=" in value:
        raise ConfigError("must name the environment variable that holds the database URL "
                          "(never the URL itself)", field=attribute.name)


def _pool(instance: PostgresBudgetOptions, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1 or (attribute.name == "max_connections" and value < instance.min_connections):
        raise ConfigError(f"must be >= 1 and max_connections >= min_connections, got {value!r}",
                          field=attribute.name)


@attrs.frozen
class PostgresBudgetOptions(SliceFields):
    """``[budget.options]`` of ``backend = "postgres"``.

    - ``url_env``: the environment variable holding the database URL
      (``postgresql://user:password@host:5432/db`` or ``key=value`` form); it is read at
      start-up into a :class:`~squirrel_models.secrets.Secret`, never logged.
    - ``schema``: the PostgreSQL schema that holds the tables (created if missing); several
      independent budgets can share a database under different schemas.
    - ``min_connections`` / ``max_connections``: the connection pool's size per process.
    - ``connect_timeout_s``: how long an operation waits for a connection before the request
      is refused with ``BudgetStoreUnavailable``.
    - ``operation_timeout_s``: the server-side ``statement_timeout`` of each operation, and
      (plus ``connect_timeout_s``) the client-side limit for an answer.
    - ``startup_timeout_s``: the longest opening the backend may take (connecting, checking
      and migrating the schema, opening the pool), at start-up or on first use: a database
      that cannot be reached, or whose schema another instance holds locked, fails start-up
      with ``BudgetStoreTimeout`` naming this field (sooner when a request's deadline comes
      first).
    - ``expired_retention_s``: how long an expired lease is kept so that a settle arriving
      after expiry still commits its spend (default 7 days).
    - ``ledger_retention_days``: ledger rows older than this many days are pruned by
      ``reconcile`` (at start-up); unset (default) keeps every row. Budgets are unaffected.
    - ``driver``: ``auto`` (psycopg's asyncio pool under asyncio, the blocking pool in worker
      threads under trio), ``async`` or ``threads``.
    - ``slices`` and ``slice_*``: leased slices, as for the ``sqlite`` backend
      (:mod:`squirrel_models.slices`; off by default).
    """

    url_env: str = attrs.field(default="SQUIRREL_BUDGET_DATABASE_URL", validator=_env_name)
    schema: str = attrs.field(default="squirrel_budget", validator=_schema)
    min_connections: int = attrs.field(default=1, validator=_pool)
    max_connections: int = attrs.field(default=10, validator=_pool)
    connect_timeout_s: float = attrs.field(default=5.0, validator=positive)
    operation_timeout_s: float = attrs.field(default=10.0, validator=positive)
    startup_timeout_s: float = attrs.field(default=15.0, validator=positive)
    expired_retention_s: float = attrs.field(default=7 * 86400.0, validator=positive)
    ledger_retention_days: int | None = attrs.field(default=None, validator=retention_days)
    driver: str = attrs.field(default="auto", validator=one_of("auto", "async", "threads"))
    application_name: str = "squirrel-models"


#: libpq's settings that take one of a few words (libpq 16-17), and those that take a whole
#: number: libpq checks them only when it connects, where a bad one looked like a database
#: that is down (BudgetStoreUnavailable) rather than the configuration error it is.
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby",
                             "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
    "ssl_min_protocol_version": ("", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
}
_INTEGERS = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
             "tcp_user_timeout", "sslcompression", "sslsni")
_INTEGER = re.compile(r"\s*[-+]?[0-9]+\s*")


def check_params(params: Mapping[str, Any], env: str, *, field: str) -> None:
    """Refuse, as a :class:`ConfigError` on ``field``, connection settings libpq would refuse
    only when it connects: a port that is no whole number from 1 to 65535 (or not one per
    host), a word setting (``sslmode``...) it does not know, a number that is none. Checked
    without any I/O, as the redis plugin checks its URL; messages quote no value (a password
    with an unencoded ``@`` ends up in the port)."""
    ports = str(params.get("port") or "").split(",")
    for port in ports:
        if port.strip() and not (_INTEGER.fullmatch(port) and 1 <= int(port) <= 65535):
            raise ConfigError(f"{env} is not usable: its port is not a whole number from 1 to "
                              "65535, or a password holds / ? # or @ without percent-encoding",
                              field=field)
    hosts = str(params.get("host") or params.get("hostaddr") or "").split(",")
    if len(ports) > 1 and len(ports) != len(hosts):
        raise ConfigError(f"{env} is not usable: it names {len(ports)} ports for "
                          f"{len(hosts)} hosts (one port, or one per host)", field=field)
    for name, allowed in _CHOICES.items():
        if name in params and params[name] not in allowed:
            raise ConfigError(f"{env} is not usable: its {name} must be one of "
                              f"{', '.join(a for a in allowed if a)}", field=field)
    for name in _INTEGERS:
        if name in params and not _INTEGER.fullmatch(str(params[name])):
            raise ConfigError(f"{env} is not usable: its {name} must be a whole number",
                              field=field)


_filtered: set[str] = set()


def _guard_loggers() -> None:
    """Scrub known secrets from psycopg's own log records (the pool logs connection errors)."""
    for name in ("psycopg", "psycopg.pool"):
        if name not in _filtered:
            logging.getLogger(name).addFilter(RedactingFilter())
            _filtered.add(name)


def connection_string(url: Secret, options: PostgresBudgetOptions) -> Secret:
    """The libpq connection string for ``url`` with our settings, as a Secret. The password
    is registered as a secret of its own, so it is scrubbed wherever it shows up alone."""
    import psycopg  # loaded when a backend is created, not with the plugin
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    _guard_loggers()
    try:
        params = conninfo_to_dict(url.reveal())
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"${options.url_env} is not a valid PostgreSQL URL: {scrub(str(exc))}",
                          field="budget.options.url_env") from None
    password = params.get("password")
    if isinstance(password, str) and password:
        Secret(password)
    check_params(params, f"${options.url_env}", field="budget.options.url_env")
    server_options = " ".join(filter(None, [
        str(params.get("options") or ""),
        f"-c statement_timeout={int(options.operation_timeout_s * 1000)}",
        "-c idle_in_transaction_session_timeout=60000"]))
    return Secret(make_conninfo(url.reveal(), options=server_options,
                                application_name=options.application_name,
                                connect_timeout=max(2, int(options.connect_timeout_s + 0.999))),
                  opaque=False)
