"""A Redis that refuses the URL's credentials (a wrong password, none where ``requirepass`` is
set, a user without the rights) is misconfigured, not down: even with ``fail_open`` the
budget and the rate-limit store raise a typed error naming ``url_env`` on every call, never
go local with a warning per request, and never show the password."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetStoreError, RateLimitStoreError
from squirrel_models.ratelimit import RateCharge
from squirrel_models_redis import (
    RateLimitRedisAuthRefused,
    RateLimitRedisUnavailable,
    RedisAuthRefused,
    RedisBudgetBackend,
    RedisOptions,
    RedisRateLimitStore,
    RedisUnavailable,
)

from tests.support.canary import leaks, texts_of

from ..support import secret_scanner
from .redisserver import PASSWORD, RedisServer

pytestmark = pytest.mark.anyio
ENV = "SQUIRREL_TEST_REDIS_AUTH_URL"
WRONG = secret_scanner.canary("Rd-refused-canary-pw")
LIMITED_PW = secret_scanner.canary("Rd-limited-user-canary-pw")
C = Charge("global", "total", "total", Decimal(10))
RPM = RateCharge("global", "rpm", 5)
FORMS = ("wrong-password", "no-password", "user-without-rights")


@pytest.fixture(scope="module")
def limited_user(redis_server: RedisServer) -> Iterator[str]:
    """A user that may log in but run nothing: its commands get NOPERM."""
    name = f"u{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.execute_command("ACL", "SETUSER", name, "on", f">{LIMITED_PW}", "-@all")
        yield name
        admin.execute_command("ACL", "DELUSER", name)


def url_of(form: str, server: RedisServer, user: str) -> str:
    return {"wrong-password": f"redis://:{WRONG}@127.0.0.1:{server.port}/0",
            "no-password": f"redis://127.0.0.1:{server.port}/0",
            "user-without-rights": f"redis://{user}:{LIMITED_PW}@127.0.0.1:{server.port}/0",
            }[form]


@pytest.mark.parametrize("driver", ["auto", "threads"])
@pytest.mark.parametrize("form", FORMS)
async def test_refused_credentials_are_not_an_outage(
        redis_server: RedisServer, limited_user: str, prefix: str, form: str, driver: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(ENV, url_of(form, redis_server, limited_user))
    caplog.set_level(logging.DEBUG)
    options = RedisOptions(url_env=ENV, key_prefix=prefix, on_unavailable="fail_open",
                           driver=driver, connect_timeout_s=2.0, operation_timeout_s=2.0)
    backend = RedisBudgetBackend(options)
    store = RedisRateLimitStore(options)
    errors: list[BaseException] = []
    try:
        for _ in range(2):  # the second call is refused too: nothing went local meanwhile
            with pytest.raises(RedisAuthRefused) as budget_info:
                await backend.reserve([C], Decimal(1), ttl=60)
            with pytest.raises(RateLimitRedisAuthRefused) as rate_info:
                await store.reserve([RPM], 10, ttl=60)
            errors += [budget_info.value, rate_info.value]
    finally:
        await backend.aclose()
        await store.aclose()
    for exc in errors:
        assert isinstance(exc, BudgetStoreError | RateLimitStoreError)
        assert not isinstance(exc, RedisUnavailable | RateLimitRedisUnavailable)
        section = "budget" if isinstance(exc, BudgetStoreError) else "rate_limits"
        assert exc.url_env == f"{ENV} ({section}.options.url_env)"  # type: ignore[attr-defined]
        assert ENV in str(exc) and "url_env" in str(exc) and "refused the password" in str(exc)
    # No fail-open warnings ("redis unreachable ... local limits"): nothing was taken for down.
    warned = [r.getMessage() for r in caplog.records
              if r.name.startswith("squirrel_models_redis") and r.levelno >= logging.WARNING]
    assert warned == []
    texts = [caplog.text] + [t for exc in errors for t in texts_of(exc)]
    for secret in (WRONG, LIMITED_PW, PASSWORD):
        assert leaks(texts, secret) == []
