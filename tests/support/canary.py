"""Canary secrets: a fixture that puts one in the environment, and every text an error shows,
to search for it.

In a ``conftest.py``::

    from tests.support.canary import canary_env_fixture

    canary_env = canary_env_fixture("SQUIRREL_TEST_X_CANARY", "sk-x-8f3a9c1e55d04b2a")  # no words in it

    def test_x(canary_env):  # the variable's name, set for this test only
        ...
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from typing import Any

import pytest

from . import secret_scanner

__all__ = ["canary_env_fixture", "leaks", "pasted_key", "texts_of"]


def canary_env_fixture(name: str, value: str, **also: str) -> Any:
    """A ``canary_env`` fixture: sets ``name`` to ``value`` (and each of ``also``) for one test
    and returns ``name``, to be given as a provider's key variable. The values become canaries
    of the secret scanner (:mod:`tests.support.secret_scanner`)."""
    secret_scanner.canary(value)
    for val in also.values():
        secret_scanner.canary(val)

    @pytest.fixture(name="canary_env")
    def fixture(monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv(name, value)
        for var, val in also.items():
            monkeypatch.setenv(var, val)
        return name

    return fixture


def pasted_key(prefix: str = "sk-proj-", length: int = 40) -> str:
    """A fresh key shaped like a real one of a provider (``prefix`` and random base62 with
    digits and both cases), registered as a canary, never as a secret of the library: the key
    a user pastes into a field that is not meant for it. Fresh each time, since a registered
    secret lasts the process and would hide the next test's leak."""
    import secrets as random_source
    import string

    body = "".join(random_source.choice(string.ascii_letters + string.digits) for _ in range(length - 3))
    return secret_scanner.canary(prefix + body + "a7Q")


def texts_of(exc: BaseException) -> list[str]:
    """Every text an exception shows: message, repr, traceback (with causes), attempts."""
    out = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for a in getattr(exc, "attempts", ()):
        out.append(repr(a))
        if a.error is not None:
            out += [str(a.error), repr(a.error), "".join(traceback.format_exception(a.error))]
    secret_scanner.collect(*out)
    return out


def leaks(texts: Iterable[str], secret: str) -> list[str]:
    """The texts that show ``secret`` or any canary, whole, in part or escaped (the secret
    scanner's rule); masked, so a failing assertion does not print the key."""
    secret_scanner.canary(secret)
    texts = list(texts)
    secret_scanner.collect(*texts)
    return secret_scanner.leaky(texts)
