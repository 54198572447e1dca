"""Shared test configuration: every async test runs on asyncio and on trio, and the secret
scanner (:mod:`tests.support.secret_scanner`) reads everything every test prints, logs or
collects for the canary keys.

Test modules with async tests set ``pytestmark = pytest.mark.anyio``.
"""

from __future__ import annotations

import pytest

from .support.secret_scanner import pytest_runtest_makereport, pytest_terminal_summary
from .support.tls import https, https_server, trusted

__all__ = ["https", "https_server", "pytest_runtest_makereport", "pytest_terminal_summary", "trusted"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
