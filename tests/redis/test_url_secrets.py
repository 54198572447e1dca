"""Every way a Redis URL carries its password (``redis://:pw@``, ``redis://user:pw@``,
``rediss://``, ``unix:///path?password=``, ``?password=`` on a TCP URL, percent-encoded) never
shows it: not when the server refuses the password or cannot be reached (error, repr,
traceback), not in the backend's repr, not in DEBUG logs, not in ``squirrel budget -vv`` (in
process and in a real process); and a URL redis-py cannot use is a ``ConfigError`` naming
``url_env`` at start-up, never a ``ValueError`` at the first request."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from squirrel_models.budget import Charge
from squirrel_models.errors import ConfigError, SquirrelError
from squirrel_models_redis import RedisBudgetBackend, RedisOptions, RedisRateLimitStore

from tests.support import budget_cli
from tests.support.canary import leaks, texts_of
from tests.support.ports import closed_port

from ..support import secret_scanner
from .redisserver import PASSWORD, RedisServer

pytestmark = pytest.mark.anyio
ENV = "SQUIRREL_TEST_REDIS_URL_FORMS"
#: a wrong password with what a URL must percent-encode (/ @ : % and a space)
WRONG = secret_scanner.canary("Rd-wrong/p@ss:W0rd %7e-canary")
C = Charge("global", "total", "total", Decimal(10))


@pytest.fixture(scope="module")
def socket_server(redis_binary: str) -> Iterator[RedisServer]:
    """A server that also listens on a unix socket (same password as the session's)."""
    server = RedisServer(redis_binary)
    server.extra = ("--unixsocket", str(server.root / "redis.sock"), "--unixsocketperm", "700")
    server.start()
    yield server
    server.remove()


def url_forms(server: RedisServer, password: str, port: int) -> dict[str, str]:
    enc = quote(password, safe="")
    sock = server.root / "redis.sock"
    return {"colon": f"redis://:{enc}@127.0.0.1:{port}/0",
            "user": f"redis://default:{enc}@127.0.0.1:{port}/0",
            "tls": f"rediss://:{enc}@127.0.0.1:{port}/0",
            "query": f"redis://127.0.0.1:{port}/0?password={enc}",
            "query-plus": f"redis://127.0.0.1:{port}/0?db=0&password={quote(password, safe='').replace('%20', '+')}",
            "unix": f"unix://{sock}?password={enc}",
            "unix-missing": f"unix://{server.root}/missing.sock?password={enc}"}


def refused_forms(server: RedisServer) -> dict[str, str]:
    """URLs the server refuses (wrong password) or that reach nothing (right password)."""
    wrong = url_forms(server, WRONG, server.port)
    gone = {f"gone-{k}": v for k, v in url_forms(server, PASSWORD, closed_port()).items()
            if not k.startswith("unix")}
    return wrong | gone


def case_ids() -> list[str]:
    return [*url_forms(RedisServer("x"), WRONG, 1), *(f"gone-{k}" for k in ("colon", "user", "tls", "query",
                                                                           "query-plus"))]


@pytest.mark.parametrize("form", case_ids())
async def test_a_refused_or_unreachable_url_never_shows_its_password(
        socket_server: RedisServer, form: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = refused_forms(socket_server)[form]
    os.environ[ENV] = url
    try:
        options = RedisOptions(url_env=ENV, key_prefix="urlforms", connect_timeout_s=0.5,
                               operation_timeout_s=0.5)
        backend = RedisBudgetBackend(options)
        store = RedisRateLimitStore(options)
        texts = [repr(backend), repr(options), repr(store)]
        for use in (backend.usage([C]), backend.reserve([C], Decimal(1), ttl=60)):
            with pytest.raises(SquirrelError) as info:
                await use
            texts += texts_of(info.value)
        await backend.aclose()
        await store.aclose()
    finally:
        del os.environ[ENV]
    texts.append(caplog.text)
    assert leaks(texts, WRONG) == [] and leaks(texts, PASSWORD) == []


@pytest.mark.parametrize("form", ["colon", "user", "query", "unix"])
def test_squirrel_budget_never_shows_the_password(socket_server: RedisServer, form: str,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """``squirrel budget -vv`` (DEBUG logs on stderr) in process and in a real process, with
    the wrong password in each form: one line naming the error, no password."""
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, url_forms(socket_server, WRONG, socket_server.port)[form])
    config = budget_cli.write_config(
        tmp_path, "redis", f'{{ url_env = "{ENV}", connect_timeout_s = 0.5 }}', provider=False)
    texts = budget_cli.failing_budget_outputs(config)
    assert "Redis" in texts[0]
    assert leaks(texts, WRONG) == []


_BAD = {"port": "redis://:{pw}@127.0.0.1:99999/0", "port-text": "redis://:{pw}@127.0.0.1:abc/0",
        "slash-in-password": "redis://:{raw}@127.0.0.1:6379/0",
        "query-value": "redis://:{pw}@127.0.0.1:6379/0?socket_timeout=soon",
        "db-path": "redis://:{pw}@127.0.0.1:6379/zero", "db-query": "redis://:{pw}@h/0?db=first",
        "unknown-setting": "redis://127.0.0.1/0?pasword={pw}",
        "tls-setting-on-tcp": "redis://:{pw}@127.0.0.1/0?ssl_cert_reqs=none",
        "tls-flag": "rediss://:{pw}@127.0.0.1/0?ssl_cert_reqs=sometimes",
        "protocol": "redis://:{pw}@127.0.0.1/0?protocol=9",
        "unix-without-path": "unix://?password={pw}",
        "pool-size": "redis://:{pw}@127.0.0.1/0?max_connections=5000",
        "op-timeout": "redis://:{pw}@127.0.0.1/0?socket_timeout=60",
        "connect-timeout": "redis://:{pw}@127.0.0.1/0?socket_connect_timeout=60",
        "pool-wait": "redis://:{pw}@127.0.0.1/0?timeout=60",
        "scheme": "http://:{pw}@127.0.0.1/0"}


@pytest.mark.parametrize("template", list(_BAD.values()), ids=list(_BAD))
def test_an_unusable_url_is_a_config_error_at_start_up(template: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a port, a query value or a setting redis-py refuses was a bare ``ValueError``
    (or ``TypeError``) at the first request, or (an unknown protocol, a TLS flag) a store error
    that ``fail_open`` would have taken for an outage; and the pool settings of the query
    silently replaced the plugin's own options."""
    url = template.format(pw=quote(WRONG, safe=""), raw=WRONG)
    monkeypatch.setenv(ENV, url)
    for make in (RedisBudgetBackend, RedisRateLimitStore):
        with pytest.raises(ConfigError) as info:
            make(RedisOptions(url_env=ENV))
        assert info.value.field is not None and info.value.field.endswith(".url_env")
        assert leaks(texts_of(info.value), WRONG) == []
