"""A real Redis server for the session, and fresh backends on it (one key prefix per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from squirrel_models.secrets import Secret
from squirrel_models_redis import RedisBudgetBackend, RedisOptions

from tests.support.factories import closing_factory

from ..support import secret_scanner
from .redisserver import PASSWORD, RedisServer, find_server

secret_scanner.canary(PASSWORD)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = find_server()
    if binary is None:
        pytest.skip("no redis-server or valkey-server on this machine; install one with: "
                    "apt-get install -y redis-server")
    return binary


@pytest.fixture(scope="session")
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary)
    server.start()
    yield server
    server.remove()


@pytest.fixture
def own_server(redis_binary: str) -> Iterator[RedisServer]:
    """A server of this test's own: hanging or killing it must not disturb the other tests."""
    server = RedisServer(redis_binary)
    server.start()
    yield server
    server.remove()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_backend(redis_server: RedisServer, prefix: str
                       ) -> AsyncIterator[Callable[..., RedisBudgetBackend]]:
    """A factory of backends on the session server under this test's key prefix
    (``**options`` override), closed afterwards."""

    def build(clock: Callable[[], float] | None = None, url: str | None = None,
              **options: Any) -> RedisBudgetBackend:
        options.setdefault("key_prefix", prefix)
        return RedisBudgetBackend(RedisOptions(**options), clock=clock,
                                  url=Secret(url or redis_server.url, opaque=False))

    async with closing_factory(build) as make:
        yield make
