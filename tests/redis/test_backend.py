"""The Redis backend beyond the conformance suite: exact money past 2**53 nano-USD, one
round trip per operation, options and URLs checked at start-up, the key prefix's owner."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from squirrel_models.budget import Charge
from squirrel_models.errors import BudgetExceeded, ConfigError
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisBudgetBackend, RedisOptions, UnusableRedis

from .redisserver import PASSWORD, RedisServer

pytestmark = pytest.mark.anyio
Make = Callable[..., RedisBudgetBackend]


async def test_amounts_are_exact_far_past_double_precision(make_backend: Make) -> None:
    """A limit of a billion USD is 10**18 nano-USD, far past the 2**53 a Lua number holds
    exactly; the scripts still refuse the one nano-USD too many."""
    b = make_backend()
    c = Charge("global", "total", "total", Decimal(10**9))
    r = await b.reserve([c], Decimal("999999999.999999997"), ttl=60)
    await b.settle(r, Decimal("999999999.999999998"))
    one = await b.reserve([c], Decimal("0.000000002"), ttl=60)  # exactly at the limit
    with pytest.raises(BudgetExceeded) as info:
        await b.reserve([c], Decimal("0.000000001"), ttl=60)
    assert info.value.committed == Decimal("999999999.999999998")
    assert info.value.reserved == Decimal("0.000000002")
    await b.settle(one, Decimal("0.000000002"))
    (u,) = await b.usage([c])
    assert (u.committed, u.reserved) == (Decimal(10**9), 0)


@pytest.mark.parametrize("driver", ["auto", "threads"])
async def test_one_round_trip_per_operation(make_backend: Make, driver: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Reserve, settle, release and usage: one command each (``EVALSHA``), counted where the
    driver sends them."""
    b = make_backend(driver=driver)
    c = (Charge("global", "total", "total", Decimal(5)), Charge("key:team", "day", "2026-11-26", Decimal(5)))
    await b.release(await b.reserve(c, Decimal("0.01"), ttl=60))  # warm: prefix checked, scripts loaded
    sent: list[Any] = []
    driver_ = b._client.driver
    assert driver_ is not None
    execute = driver_.execute

    async def counted(*args: Any, **kw: Any) -> Any:
        sent.append(args[0])
        return await execute(*args, **kw)

    monkeypatch.setattr(type(driver_), "execute",
                        lambda self, *args, **kw: counted(*args, **kw))
    r = await b.reserve(c, Decimal("0.20"), ttl=60)
    await b.settle(r, Decimal("0.10"))
    await b.release(await b.reserve(c, Decimal("0.20"), ttl=60))
    await b.usage(c)
    assert sent == ["EVALSHA"] * 5


def test_options_are_checked_and_name_the_field() -> None:
    for kw, field in [({"key_prefix": "a{b}"}, "key_prefix"), ({"on_unavailable": "maybe"}, "on_unavailable"),
                      ({"driver": "sync"}, "driver"), ({"max_connections": 0}, "max_connections"),
                      ({"operation_timeout_s": 0}, "operation_timeout_s"),
                      ({"url_env": "redis://x"}, "url_env"), ({"ledger_retention_days": 0}, "ledger_retention_days")]:
        with pytest.raises(ConfigError) as info:
            RedisOptions(**kw)
        assert info.value.field == field, (kw, info.value.field)


def test_a_retention_past_the_calendar_is_a_config_error(redis_server: RedisServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``ledger_retention_days = 800000`` was taken, and every start-up of a manager on it
    raised OverflowError (the cut-off fell before year 1), a traceback instead of the error
    naming the field."""
    from squirrel_models import ModelManager

    from tests.support.ledger_retention import assert_retention_option_is_validated

    assert_retention_option_is_validated(RedisOptions)
    monkeypatch.setenv("SQUIRREL_REDIS_URL", redis_server.url)
    with pytest.raises(ConfigError) as info:
        ModelManager({"budget": {"backend": "redis",
                                 "options": {"ledger_retention_days": 800_000}}})
    assert info.value.field == "budget.options.ledger_retention_days"


def test_url_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQUIRREL_REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as info:
        RedisBudgetBackend(RedisOptions())
    assert info.value.field == "budget.options.url_env"
    monkeypatch.setenv("SQUIRREL_REDIS_URL", f"postgresql://u:{PASSWORD}@h/db")
    with pytest.raises(ConfigError) as info:
        RedisBudgetBackend(RedisOptions())
    assert info.value.field == "budget.options.url_env"
    assert PASSWORD not in str(info.value)


async def test_a_prefix_of_another_application_is_left_alone(make_backend: Make) -> None:
    b = make_backend()
    meta = f"{{{b.key_prefix}}}:meta"
    await b.execute("seed", "HSET", meta, "application", "someone-else", "version", "3")
    with pytest.raises(UnusableRedis) as info:
        await b.usage([Charge("global", "total", "total", Decimal(1))])
    assert info.value.field == "budget.options.key_prefix"
    assert await b.execute("check", "HGET", meta, "application") == b"someone-else"


async def test_a_newer_data_version_is_refused(make_backend: Make) -> None:
    b = make_backend()
    meta = f"{{{b.key_prefix}}}:meta"
    await b.execute("seed", "HSET", meta, "application", "squirrel-models", "version", "99")
    with pytest.raises(UnusableRedis, match="newer"):
        await b.open()


async def test_scripts_load_again_after_a_script_flush(make_backend: Make) -> None:
    b = make_backend()
    c = Charge("global", "total", "total", Decimal(1))
    await b.usage([c])
    await b.execute("flush", "SCRIPT", "FLUSH")
    r = await b.reserve([c], Decimal("0.5"), ttl=60)
    await b.settle(r, Decimal("0.25"))
    (u,) = await b.usage([c])
    assert u.committed == Decimal("0.25")


async def test_no_secret_in_errors_or_repr(redis_server: RedisServer, prefix: str) -> None:
    url = redis_server.url.replace(PASSWORD, "wrong-" + PASSWORD)
    b = RedisBudgetBackend(RedisOptions(key_prefix=prefix), url=Secret(url, opaque=False))
    text: list[Any] = [repr(b)]
    with pytest.raises(ConfigError.__mro__[1]) as info:  # a SquirrelError
        await b.usage([Charge("global", "total", "total", Decimal(1))])
    text += [str(info.value), repr(info.value)]
    assert not any(PASSWORD in t for t in text), text
    await b.aclose()
