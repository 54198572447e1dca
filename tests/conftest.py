"""Shared test configuration: every async test runs on asyncio and on trio, and the secret
scanner (:mod:`tests.support.secret_scanner`) reads everything every test prints, logs or
collects for the canary keys.

Test modules with async tests set ``pytestmark = pytest.mark.anyio``.

Hypothesis runs under a profile without its wall-clock checks (a 200 ms deadline per example,
the too-slow health check on generating them): on a shared 2-core machine at load 10 one
example can wait longer than that for a CPU, and hypothesis then fails the test as flaky
("Unreliable test timings") although nothing was wrong. What every property proves is
unchanged; how fast code is, is the benchmarks' business (never a timed assertion in a test).
Settings a test gives itself still apply over the profile.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from .support.secret_scanner import pytest_runtest_makereport, pytest_terminal_summary
from .support.tls import https, https_server, trusted

__all__ = ["https", "https_server", "pytest_runtest_makereport", "pytest_terminal_summary", "trusted"]

settings.register_profile("loaded-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("loaded-machine")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
