"""``[budget.options]`` of ``backend = "sqlite"``.

Its own module, apart from :mod:`.backend`: the plugin's entry point registers these options
(a configuration error names its field at start-up), and the backend, with sqlite3, asyncio and
its worker threads, is imported only when a ``sqlite`` backend is created.
"""

from __future__ import annotations

from typing import Any

import attrs
from squirrel_models.config import path_option
from squirrel_models.errors import ConfigError
from squirrel_models.sliceoptions import SliceFields
from squirrel_models.sqlbudget import one_of, positive, retention_days

__all__ = ["SqliteBudgetOptions"]


def _path(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or value == ":memory:":
        raise ConfigError("must be the path of a database file (it is created if missing)",
                          field=attribute.name)


@attrs.frozen
class SqliteBudgetOptions(SliceFields):
    """``[budget.options]`` of ``backend = "sqlite"``.

    - ``path``: the database file, created (with its folder) if missing; ``~`` is expanded,
      and a relative path is relative to the configuration file's folder (``Config.base_dir``).
    - ``busy_timeout_s``: how long an operation waits for another writer before failing
      (less when the request's deadline comes first).
    - ``synchronous``: ``NORMAL`` (default; WAL survives a process crash, the last commits may
      be lost on power loss) or ``FULL`` (also durable across power loss, slower).
    - ``connections``: ``shared`` (one connection behind a lock, default and faster) or
      ``per_thread``.
    - ``expired_retention_s``: how long an expired lease is kept so that a settle arriving
      after expiry still commits its spend (default 7 days).
    - ``ledger_retention_days``: ledger rows older than this many days are pruned by
      ``reconcile`` (at start-up); unset (default) keeps every row. Budgets are unaffected.
    - ``slices`` (default false): serve reservations from leased slices of each budget's room
      (:mod:`squirrel_models.slices`), flushed every ``slice_flush_s`` seconds (0.2), leases
      of ``slice_lease_s`` seconds (30; a dead process's slice is charged in full after it),
      each slice room for ``slice_requests`` worst cases (64) but at most ``slice_fraction``
      (0.25) of the room left.
    """

    path: str = path_option(validator=_path)
    busy_timeout_s: float = attrs.field(default=30.0, validator=positive)
    synchronous: str = attrs.field(default="NORMAL", validator=one_of("NORMAL", "FULL", "EXTRA"))
    connections: str = attrs.field(default="shared", validator=one_of("shared", "per_thread"))
    expired_retention_s: float = attrs.field(default=7 * 86400.0, validator=positive)
    ledger_retention_days: int | None = attrs.field(default=None, validator=retention_days)
