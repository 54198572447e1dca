"""Factories of backends and stores that a test makes as it needs them, closed afterwards.

In a fixture::

    @pytest.fixture
    async def make_backend(db_path: str) -> AsyncIterator[Callable[..., SqliteBudgetBackend]]:
        def build(**options: Any) -> SqliteBudgetBackend:
            options.setdefault("path", db_path)
            return SqliteBudgetBackend(SqliteBudgetOptions(**options))

        async with closing_factory(build) as make:
            yield make
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = ["closing_factory"]


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


P = ParamSpec("P")
T = TypeVar("T", bound=_Closeable)


@contextlib.asynccontextmanager
async def closing_factory(build: Callable[P, T]) -> AsyncIterator[Callable[P, T]]:
    """``build`` as a factory whose every product is closed (``await x.aclose()``, in the order
    made) when the block ends."""
    made: list[Any] = []

    def make(*args: P.args, **kwargs: P.kwargs) -> T:
        made.append(x := build(*args, **kwargs))
        return x

    try:
        yield make
    finally:
        for x in made:
            await x.aclose()
