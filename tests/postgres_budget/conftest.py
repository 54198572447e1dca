"""A real PostgreSQL server for the session, and fresh backends on it (one schema per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from squirrel_models.secrets import Secret
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions

from tests.support.factories import closing_factory

from ..support import secret_scanner
from .pgserver import PASSWORD, PgServer, find_bindir

secret_scanner.canary(PASSWORD)


@pytest.fixture(scope="session")
def pg_bindir() -> Any:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl) in /usr/lib/postgresql/*/bin "
                    "or on PATH; install them with: apt-get install -y postgresql")
    return bindir


@pytest.fixture(scope="session")
def pg_server(pg_bindir: Any) -> Iterator[PgServer]:
    server = PgServer.create(pg_bindir)
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def own_server(pg_bindir: Any) -> Iterator[PgServer]:
    """A server of the test module's own: restarting or hanging it must not disturb the
    other tests."""
    server = PgServer.create(pg_bindir)
    server.start()
    yield server
    server.remove()


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_backend(pg_server: PgServer, schema: str
                       ) -> AsyncIterator[Callable[..., PostgresBudgetBackend]]:
    """A factory of backends on the session server in this test's schema (``**options``
    override), closed afterwards."""

    def build(clock: Callable[[], float] | None = None, url: str | None = None,
              **options: Any) -> PostgresBudgetBackend:
        options.setdefault("schema", schema)
        options.setdefault("connect_timeout_s", 3.0)
        return PostgresBudgetBackend(PostgresBudgetOptions(**options), clock=clock,
                                     url=Secret(url or pg_server.url))

    async with closing_factory(build) as make:
        yield make
