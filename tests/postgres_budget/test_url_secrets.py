"""Every way a PostgreSQL connection string carries its password (``postgresql://u:pw@h/db``,
``?password=``, a key=value string with ``password=`` quoted or not, a ``passfile``,
percent-encoding, an ``options`` field beside it) never shows it: not when the server refuses
it or cannot be reached (error, repr, traceback), not in DEBUG logs, not in ``squirrel budget
-vv`` (in process and in a real process); and a string libpq cannot parse is a ``ConfigError``
naming ``url_env`` that does not quote the piece it choked on when that piece is the password."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from squirrel_models.budget import Charge
from squirrel_models.errors import ConfigError, SquirrelError
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions

from tests.support import budget_cli
from tests.support.canary import leaks, texts_of
from tests.support.ports import closed_port

from ..support import secret_scanner
from .pgserver import PASSWORD, USER, PgServer

pytestmark = pytest.mark.anyio
ENV = "SQUIRREL_TEST_PG_URL_FORMS"
#: a wrong password with what a URL must percent-encode, and a quote and a backslash
WRONG = secret_scanner.canary("Pg-wrong/p@ss:W0rd %7e'q\\-canary")
C = Charge("global", "total", "total", Decimal(10))


def _kv(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def forms(port: int, password: str, tmp_path: Path) -> dict[str, str]:
    enc = quote(password, safe="")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{port}:*:{USER}:" + password.replace("\\", "\\\\")
                        .replace(":", "\\:") + "\n")
    passfile.chmod(0o600)
    base = f"127.0.0.1:{port}/postgres"
    return {"url": f"postgresql://{USER}:{enc}@{base}",
            "url-short-scheme": f"postgres://{USER}:{enc}@{base}",
            "query": f"postgresql://{USER}@{base}?password={enc}",
            "options": f"postgresql://{USER}:{enc}@{base}?options=-c%20search_path%3Dpublic",
            "key-value": f"host=127.0.0.1 port={port} user={USER} password={_kv(password)} "
                         "dbname=postgres options='-c search_path=public'",
            "passfile": f"host=127.0.0.1 port={port} user={USER} passfile={passfile} "
                        "dbname=postgres"}


@pytest.mark.parametrize("form", ["url", "url-short-scheme", "query", "options", "key-value",
                                  "passfile"])
@pytest.mark.parametrize("server", ["refuses", "unreachable"])
async def test_a_refused_or_unreachable_dsn_never_shows_its_password(
        pg_server: PgServer, form: str, server: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    port, password = (pg_server.port, WRONG) if server == "refuses" else (closed_port(), PASSWORD)
    monkeypatch.setenv(ENV, forms(port, password, tmp_path)[form])
    options = PostgresBudgetOptions(url_env=ENV, connect_timeout_s=1, startup_timeout_s=3)
    backend = PostgresBudgetBackend(options)
    texts = [repr(backend), repr(options)]
    try:
        with pytest.raises(SquirrelError) as info:
            await backend.usage([C])
        texts += texts_of(info.value)
        if server == "refuses":
            assert "password authentication failed" in str(info.value)
    finally:
        await backend.aclose()
    texts.append(caplog.text)
    assert leaks(texts, WRONG) == [] and leaks(texts, PASSWORD) == []


@pytest.mark.parametrize("form", ["url", "query", "key-value"])
def test_squirrel_budget_never_shows_the_password(pg_server: PgServer, form: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``squirrel budget -vv`` (DEBUG logs on stderr) in process and in a real process, with
    the wrong password in each form: one error, no password."""
    budget_cli.use_scripted(monkeypatch)
    monkeypatch.setenv(ENV, forms(pg_server.port, WRONG, tmp_path)[form])
    config = budget_cli.write_config(
        tmp_path, "postgres", f'{{ url_env = "{ENV}", connect_timeout_s = 1 }}', provider=False)
    texts = budget_cli.failing_budget_outputs(config)
    assert "password authentication failed" in texts[0]
    assert leaks(texts, WRONG) == []


#: strings libpq refuses, whose error quotes the piece it choked on (here the password), and
#: that password
_UNPARSEABLE = {
    "space-in-url-password": ("postgresql://u:{pw}@h/db", "Pg-leak 1st-canary-pw"),
    "space-in-query-password": ("postgresql://u@h/db?password={pw}", "Pg-leak%20x 2nd-canary"),
    "bad-percent-escape": ("postgresql://u:{pw}@h/db", "Pg-leak%zz3rd-canary-pw"),
    "unterminated-quote": ("host=h password='{pw} user=u", "Pg-leak 4th-canary-pw"),
    "missing-equals": ("host=h password={pw} bogus", "Pg-leak-5th-canary-pw")}


@pytest.mark.parametrize(("dsn", "password"), list(_UNPARSEABLE.values()), ids=list(_UNPARSEABLE))
def test_an_unparseable_dsn_is_a_config_error_without_its_password(
        dsn: str, password: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: ``unexpected spaces found in "<the password>"`` and ``invalid percent-encoded
    token: "Pg-leak%zz***"`` showed it (the parse failed, so it was never registered)."""
    secret_scanner.canary(password)
    monkeypatch.setenv(ENV, dsn.format(pw=password))
    with pytest.raises(ConfigError) as info:
        PostgresBudgetBackend(PostgresBudgetOptions(url_env=ENV))
    assert info.value.field == "budget.options.url_env"
    assert leaks(texts_of(info.value), password) == []


#: well-formed strings with a setting libpq refuses only when it connects
_BAD_SETTINGS = {
    "port-not-a-number": "postgresql://u:pw@127.0.0.1:fivefourthreetwo/db",
    "port-out-of-range": "postgresql://u:pw@127.0.0.1:99999/db",
    "key-value-port": "host=127.0.0.1 port=0 user=u dbname=db",
    "ports-for-hosts": "postgresql://u:pw@127.0.0.1:5432,127.0.0.2:5433,127.0.0.3/db?port=1,2",
    "sslmode": "postgresql://u:pw@127.0.0.1/db?sslmode=required",
    "target-session-attrs": "postgresql://u:pw@127.0.0.1/db?target_session_attrs=master",
    "keepalives": "host=127.0.0.1 keepalives_idle=often dbname=db"}


@pytest.mark.parametrize("dsn", list(_BAD_SETTINGS.values()), ids=list(_BAD_SETTINGS))
async def test_a_bad_setting_in_the_url_is_a_config_error_at_startup(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: libpq checked these when it connected, and start-up failed with
    ``BudgetStoreUnavailable`` ("budget database unavailable"), as if the database were down.
    Now a ConfigError naming ``url_env`` when the manager is made, before any connection;
    a well-formed URL to a server that is down stays BudgetStoreUnavailable."""
    from squirrel_models import ModelManager
    from squirrel_models_postgres_budget.errors import BudgetStoreUnavailable

    monkeypatch.setenv(ENV, dsn)
    with pytest.raises(ConfigError) as info:
        ModelManager({"budget": {"backend": "postgres", "options": {"url_env": ENV}}})
    assert info.value.field == "budget.options.url_env"
    assert "pw" not in str(info.value).split(": ", 1)[1]
    monkeypatch.setenv(ENV, f"postgresql://u:pw@127.0.0.1:{closed_port()}/db?sslmode=disable")
    backend = PostgresBudgetBackend(PostgresBudgetOptions(url_env=ENV, connect_timeout_s=1,
                                                          startup_timeout_s=3))
    try:
        with pytest.raises(BudgetStoreUnavailable):
            await backend.open()
    finally:
        await backend.aclose()
