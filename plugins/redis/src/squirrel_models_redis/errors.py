"""Errors of the Redis plugin, and the one helper that maps ``redis-py`` errors into them.

::

    SquirrelError
    ├── ConfigError
    │   └── UnusableRedis             the key prefix holds another application's data, or
    │                                 data of a newer version of this plugin, or the server
    │                                 evicts keys when full (allkeys-*); untouched
    ├── squirrel_models.BudgetStoreError      (the budget backend's errors)
    │   └── RedisStoreError           a command failed on the server (a script error, OOM)
    │       ├── RedisAuthRefused      Redis refused the URL's password or user (NOAUTH,
    │       │                         WRONGPASS, NOPERM): a misconfiguration, never failed
    │       │                         open; names ``url_env``
    │       └── RedisUnavailable      Redis cannot be reached (refused, reset, timed out):
    │           │                     with ``on_unavailable = "fail_closed"`` the request is
    │           │                     refused; with ``"fail_open"`` local limits are used
    │           └── RedisTimeout      the call did not finish in the time it had (the
    │                                 request's deadline, the cleanup bound, or the plugin's
    │                                 own timeouts); also a ``squirrel_models.BudgetStoreTimeout``
    └── squirrel_models.RateLimitStoreError   (the rate-limit store's: the same three)
        └── RateLimitRedisError
            ├── RateLimitRedisAuthRefused
            └── RateLimitRedisUnavailable
                └── RateLimitRedisTimeout     ``by_deadline`` as above

Both families come from one mapping, :func:`translate` (the rate-limit store converts with
:func:`as_ratelimit_error`), so a failure reads the same whichever store met it.

Messages never contain the Redis URL or its password: messages are scrubbed (:func:`scrub`)
and the original exception is not chained, since its text may not be.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from squirrel_models import errors as core
from squirrel_models.budget import STORE_MIN_S, StoreDeadline
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import MASK, redact

__all__ = ["RateLimitRedisAuthRefused", "RateLimitRedisError", "RateLimitRedisTimeout",
           "RateLimitRedisUnavailable", "RedisAuthRefused", "RedisStoreError", "RedisTimeout",
           "RedisUnavailable", "UnusableRedis",
           "as_ratelimit_error", "map_redis_errors", "scrub", "translate"]

_URL_PASSWORD = re.compile(r"(rediss?://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
#: Replies that mean "not now" rather than "wrong": loading its data, a script or replica
#: busy, a failover (a replica refuses writes), out of memory, no quorum. The server cannot
#: do the work, exactly as if it were unreachable: fail_closed refuses, fail_open goes local.
_UNAVAILABLE = re.compile(r"^(LOADING|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|READONLY|OOM|"
                          r"NOREPLICAS|MISCONF)\b")
#: Replies that refuse this client's credentials: the URL is wrong, and stays wrong however
#: long one waits, so it is a misconfiguration rather than an outage (never failed open).
_REFUSED = re.compile(r"^(NOAUTH|WRONGPASS|NOPERM)\b")


def scrub(text: str) -> str:
    """``text`` without any registered secret or URL password; first line only."""
    text = redact(text).strip().splitlines()[0] if text.strip() else ""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)


class UnusableRedis(ConfigError):
    """The keys under ``prefix`` cannot be used by this plugin; they were left untouched."""

    def __init__(self, prefix: str, reason: str, field: str = "budget.options.key_prefix"
                 ) -> None:
        self.prefix, self.reason = prefix, reason
        super().__init__(f"key prefix {prefix!r}: {reason}; nothing was modified", field=field)


class RedisStoreError(core.BudgetStoreError):
    """A Redis ``operation`` failed on the server."""

    def __init__(self, operation: str, detail: str) -> None:
        self.detail = detail
        super().__init__(f"redis: {operation} failed: {detail}", operation=operation)


class RedisUnavailable(RedisStoreError):
    """Redis cannot be reached; with ``fail_closed`` the request is refused."""

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(operation, detail)
        self.args = (f"redis unavailable: {operation} refused: {detail}",)


def _refused(operation: str, detail: str, url_env: str) -> str:
    return (f"redis: {operation} refused: Redis refused the password (or user) of the URL in "
            f"{url_env}: fix that URL ({detail})")


class RedisAuthRefused(RedisStoreError):
    """Redis refused the credentials of the URL that ``url_env`` names (a wrong or missing
    password, or a user without the rights): fixed only by fixing the URL, so it is never
    taken for an outage (``fail_open`` does not apply)."""

    def __init__(self, operation: str, detail: str, url_env: str) -> None:
        super().__init__(operation, detail)
        self.url_env = url_env
        self.args = (_refused(operation, detail, url_env),)


class RedisTimeout(RedisUnavailable, core.BudgetStoreTimeout):
    """The caller stopped waiting at the end of its time; ``by_deadline``: that time was the
    caller's (see ``squirrel_models.BudgetStoreTimeout``). ``pending`` is always true: the
    command may have reached the server and still take effect there (a script runs whole or
    not at all), so a settlement's ledger row is left to it, never written a second time."""

    def __init__(self, operation: str, detail: str, *, by_deadline: bool = False) -> None:
        super().__init__(operation, detail)
        self.by_deadline = by_deadline
        self.pending = True
        self.args = (f"redis: {operation} timed out: {detail}",)


class RateLimitRedisError(core.RateLimitStoreError):
    """A rate-limit ``operation`` failed on the server."""

    def __init__(self, message: str, operation: str, detail: str) -> None:
        self.detail = detail
        super().__init__(message, operation=operation)


class RateLimitRedisUnavailable(RateLimitRedisError):
    """Redis cannot be reached; with ``fail_closed`` the request is refused."""


class RateLimitRedisAuthRefused(RateLimitRedisError):
    """Redis refused the credentials of the URL that ``url_env`` names (never failed open)."""

    def __init__(self, message: str, operation: str, detail: str, url_env: str) -> None:
        super().__init__(message, operation, detail)
        self.url_env = url_env


class RateLimitRedisTimeout(RateLimitRedisUnavailable):
    """The call was stopped at the end of its time; ``by_deadline``: the caller's."""

    def __init__(self, message: str, operation: str, detail: str, *,
                 by_deadline: bool = False) -> None:
        super().__init__(message, operation, detail)
        self.by_deadline = by_deadline


def as_ratelimit_error(exc: RedisStoreError) -> RateLimitRedisError:
    """The rate-limit store's error for a store error ``exc`` (same message and kind)."""
    op = exc.operation or "call"
    if isinstance(exc, RedisTimeout):
        return RateLimitRedisTimeout(str(exc), op, exc.detail, by_deadline=exc.by_deadline)
    if isinstance(exc, RedisAuthRefused):
        return RateLimitRedisAuthRefused(str(exc), op, exc.detail, exc.url_env)
    if isinstance(exc, RedisUnavailable):
        return RateLimitRedisUnavailable(str(exc), op, exc.detail)
    return RateLimitRedisError(str(exc), op, exc.detail)


def _timed_out(operation: str, deadline: StoreDeadline | None, detail: str) -> RedisTimeout:
    if deadline is None:
        return RedisTimeout(operation, detail)
    by_deadline = deadline.spent()
    why = deadline.why() if by_deadline else "the plugin's own timeout"
    # How long the call waited: the caller's time only when it was what ran out (the own
    # operation timeout may have cut it long before).
    waited = deadline.seconds - (deadline.at - time.monotonic())
    return RedisTimeout(operation, f"stopped after {max(waited, STORE_MIN_S):.2f}s, "
                                   f"{why}: {detail}", by_deadline=by_deadline)


def translate(exc: BaseException, operation: str, deadline: StoreDeadline | None = None,
              url_env: str = "url_env") -> RedisStoreError:
    """The typed error for a ``redis-py`` exception (or a TimeoutError of the caller's bound)
    raised by ``operation``; ``url_env`` says where the URL came from, for a refused one."""
    import redis.exceptions as rx

    detail = f"{type(exc).__name__}: {scrub(str(exc))}"
    # Before the connection errors: redis-py's AuthenticationError is one of them.
    refused = (rx.AuthenticationError, rx.AuthenticationWrongNumberOfArgsError,
               rx.NoPermissionError)
    if isinstance(exc, refused) or (isinstance(exc, rx.ResponseError) and _REFUSED.match(str(exc))):
        return RedisAuthRefused(operation, detail, url_env)
    if isinstance(exc, TimeoutError | rx.TimeoutError):
        return _timed_out(operation, deadline, "Redis did not answer in time")
    if isinstance(exc, rx.ConnectionError | OSError):
        # A refused or reset connection, also the "busy" replies of a server loading its data.
        return RedisUnavailable(operation, detail)
    busy = (rx.OutOfMemoryError, rx.ReadOnlyError, rx.TryAgainError, rx.ClusterDownError)
    if isinstance(exc, busy) or (isinstance(exc, rx.ResponseError) and _UNAVAILABLE.match(str(exc))):
        return RedisUnavailable(operation, detail)
    return RedisStoreError(operation, detail)


@contextmanager
def map_redis_errors(operation: str, deadline: StoreDeadline | None = None,
                     url_env: str = "url_env") -> Iterator[None]:
    """Translate Redis errors (and the driver's own TimeoutError) raised inside the block;
    ``url_env`` as in :func:`translate`."""
    import redis.exceptions as rx

    try:
        yield
    except (rx.RedisError, TimeoutError, OSError) as exc:
        # Not chained: the original's text may carry the URL.
        raise translate(exc, operation, deadline, url_env) from None
