"""Discovery through the real entry point, the commands it adds, the public API, and the
[gateway] configuration (errors naming the field, keys never held in plain text)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import attrs
import click
import httpx
import pytest
from squirrel_models.errors import ConfigError
from squirrel_models.plugins import PluginManager
from squirrel_models_gateway import GatewayConfig, VirtualKey, hash_key, load_gateway_config

from ..support import secret_scanner
from .conftest import ENV_KEY, ENV_KEY_VAR, TEAM_KEY


def test_plugin_is_installed() -> None:
    pm = PluginManager()
    info = {i.name: i for i in pm.plugins()}["gateway"]
    assert info.source == "entrypoint"
    assert info.dist == "squirrel-models-gateway"
    assert "register_commands" in info.hooks
    group = click.Group()
    pm.add_commands(group)
    assert {"serve", "hash-key"} <= set(group.commands)
    assert pm.failures == []


def test_exactly_one_entry_point() -> None:
    ours = [ep for ep in entry_points(group="squirrel_models")
            if ep.dist is not None and ep.dist.name == "squirrel-models-gateway"]
    assert [(ep.name, ep.value) for ep in ours] == [("gateway", "squirrel_models_gateway.plugin")]


def test_public_api() -> None:
    import squirrel_models_gateway as pkg

    assert pkg.__all__ == sorted(["Gateway", "GatewayConfig", "GatewayError", "GatewayThread", "VirtualKey",
                                  "build", "create_app", "error_for", "hash_key", "load_gateway_config",
                                  "serve"])
    for name in pkg.__all__:
        assert getattr(pkg, name).__module__.startswith("squirrel_models_gateway."), name


def test_loading_the_plugin_imports_no_server() -> None:
    """Every ModelManager loads the entry point: it must not import the HTTP stack."""
    code = ("import sys; from squirrel_models import ModelManager, PluginManager; "
            "pm = PluginManager(); ModelManager(plugins=pm); "
            "assert 'gateway' in {i.name for i in pm.plugins()}; "
            "print([m for m in ('starlette', 'uvicorn', 'prometheus_client', 'opentelemetry.sdk') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_installed_command(tmp_path: Path) -> None:
    """``squirrel serve --help`` and ``squirrel hash-key`` through the real console script."""
    squirrel = Path(sys.executable).parent / "squirrel"
    out = subprocess.run([str(squirrel), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--port" in out.stdout and "--host" in out.stdout
    out = subprocess.run([str(squirrel), "hash-key"], input=TEAM_KEY + "\n", capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == hash_key(TEAM_KEY)
    secret_scanner.collect(out.stdout, out.stderr)
    # a bad [gateway] table stops serve at start-up, naming the field, exit code 2
    cfg = tmp_path / "squirrel.toml"
    cfg.write_text('[gateway]\nport = 8080\n[[gateway.keys]]\nname = "a"\nsha256 = "' + TEAM_KEY + '"\n')
    out = subprocess.run([str(squirrel), "serve", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert "gateway.keys[0].sha256" in out.stderr
    secret_scanner.collect(out.stdout, out.stderr)
    assert TEAM_KEY not in out.stderr


@pytest.mark.parametrize("where", ["serve -v", "-v serve"])
def test_serve_v_logs_more_wherever_it_is_given(tmp_path: Path, where: str) -> None:
    """``squirrel serve -v`` (its --help: "-v info, -vv debug") showed no info line: its own
    -v lowered the root logger's level, not the one the command line's log handler shows."""
    squirrel = Path(sys.executable).parent / "squirrel"
    cfg = tmp_path / "squirrel.toml"
    cfg.write_text("[gateway]\nallow_anonymous = true\n")
    proc = subprocess.Popen([str(squirrel), *where.split(), "--port", "0", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        while not (seen and seen[-1].startswith("squirrel serve:")) and proc.poll() is None:
            seen.append(proc.stderr.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert any(line.startswith("info: ") for line in seen), "".join(seen) + rest


def test_serve_announces_the_url_it_listens_on_once_it_does(tmp_path: Path) -> None:
    """``squirrel serve --port 0`` prints the port the system chose (it printed ``:0``, so a
    user could not find the gateway), and a port in use is refused without being announced
    first."""
    squirrel = Path(sys.executable).parent / "squirrel"
    cfg = tmp_path / "squirrel.toml"
    cfg.write_text("[gateway]\nallow_anonymous = true\n")
    proc = subprocess.Popen([str(squirrel), "serve", "--port", "0", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        while not line.startswith("squirrel serve:") and (line or proc.poll() is None):
            line = proc.stderr.readline()  # warnings, then the announcement (or the end)
        found = re.match(r"squirrel serve: (http://127\.0\.0\.1:(\d+)/v1) \(Ctrl-C stops\)$", line)
        assert found is not None and int(found[2]) > 0, line
        assert httpx.get(found[1].removesuffix("/v1") + "/health", timeout=10).status_code == 200
        # the same port, now in use: an error, and no URL announced
        taken = subprocess.run([str(squirrel), "serve", "--port", found[2], "--config", str(cfg)],
                               capture_output=True, text=True, timeout=120)
        assert taken.returncode == 1, taken.stderr
        assert "squirrel serve: http" not in taken.stderr
        assert f"could not start on 127.0.0.1:{found[2]}" in taken.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def key(**kw: Any) -> dict[str, Any]:
    return {"name": "a", "sha256": hash_key("k" * 20), **kw}


BAD = [({"keys": []}, "gateway.keys"),
       ({"keys": [key(sha256="ABC")]}, "gateway.keys[0].sha256"),
       ({"keys": [key(sha256=None)]}, "gateway.keys[0].sha256"),
       ({"keys": [key(key_env="lower case")]}, "gateway.keys[0].sha256"),
       ({"keys": [{"name": "a", "key_env": "SQUIRREL_TEST_UNSET_VARIABLE"}]}, "gateway.keys[0].key_env"),
       ({"keys": [key(name="has space")]}, "gateway.keys[0].name"),
       ({"keys": [key(), key()]}, "gateway.keys[1].name"),
       ({"keys": [key(), key(name="b")]}, "gateway.keys[1].sha256"),
       ({"keys": [key(colour="red")]}, "gateway.keys[0].colour"),
       ({"keys": [key()], "port": 70000}, "gateway.port"),
       ({"keys": [key()], "port": "80"}, "gateway.port"),
       ({"keys": [key()], "aliases": {"auto": "x/y"}}, "gateway.aliases.auto"),
       ({"keys": [key()], "aliases": {"a": []}}, "gateway.aliases.a"),
       ({"keys": [key()], "shutdown_timeout": 0}, "gateway.shutdown_timeout"),
       ({"keys": [key()], "max_body_bytes": -1}, "gateway.max_body_bytes"),
       ({"keys": [key()], "frobnicate": 1}, "gateway.frobnicate"),
       # budget keys every backend stores (PostgreSQL refused these at the first request)
       ({"keys": [key(budget_key="team\x00a")]}, "gateway.keys[0].budget_key"),
       ({"keys": [key(budget_key="t" * 300)]}, "gateway.keys[0].budget_key"),
       ({"allow_anonymous": True, "anonymous_budget_key": "anon\nymous"}, "gateway.anonymous_budget_key")]


@pytest.mark.parametrize(("table", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_config_names_the_field(table: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(table)
    assert info.value.field == field, str(info.value)


def test_keys_are_never_held_in_plain_text(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(ENV_KEY_VAR, ENV_KEY)
    cfg = load_gateway_config({"keys": [{"name": "env", "key_env": ENV_KEY_VAR, "models": ["a/b"]},
                                        {"name": "hashed", "sha256": hash_key(TEAM_KEY)}]})
    assert cfg.keys[0].sha256 == hash_key(ENV_KEY)
    texts = [repr(cfg), str(cfg), repr(cfg.keys), str(attrs.asdict(cfg))]
    secret_scanner.collect(*texts)
    assert all(ENV_KEY not in t and TEAM_KEY not in t for t in texts)
    assert "sha256" not in repr(cfg.keys[0])
    # a plain key pasted where its hash belongs is refused without being echoed
    with pytest.raises(ConfigError) as info:
        load_gateway_config({"keys": [{"name": "oops", "sha256": TEAM_KEY}]})
    secret_scanner.collect(str(info.value), repr(info.value))
    assert TEAM_KEY not in str(info.value)


def test_aliases_take_a_name_or_a_group() -> None:
    cfg = load_gateway_config({"allow_anonymous": True, "aliases": {"one": "a/x", "two": ["a/x", "b/y"]}})
    assert cfg.aliases == {"one": ("a/x",), "two": ("a/x", "b/y")}
    assert isinstance(cfg, GatewayConfig) and VirtualKey.__name__ == "VirtualKey"


def test_configuration_reference_documents_every_field() -> None:
    """docs/configuration.md lists every [gateway] field with its real default (the docs
    session cannot import this plugin, so the check lives here)."""
    import re

    text = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    for cls, heading in ((GatewayConfig, "`GatewayConfig`"), (VirtualKey, "`VirtualKey`")):
        start = text.index(heading)
        end = text.find("\n## ", start + 1)
        nxt = text.find("\n### ", start + 1)
        section = text[start:min(x for x in (end, nxt) if x > 0)]
        rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", section, re.MULTILINE))
        for f in attrs.fields(cls):  # type: ignore[arg-type]
            assert f.name in rows, f"{cls.__name__}.{f.name} is not documented"
            default = f.default
            if default is attrs.NOTHING:
                want = "required"
            elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                want = "`{}`"
            elif default is None:
                want = "unset"
            elif isinstance(default, bool):
                want = f"`{str(default).lower()}`"
            elif isinstance(default, str):
                want = f'`"{default}"`'
            elif isinstance(default, tuple):
                want = "`[]`"
            else:
                want = f"`{default}`"
            assert rows[f.name].strip() == want, f"{cls.__name__}.{f.name}"
        assert set(rows) == {f.name for f in attrs.fields(cls)}  # type: ignore[arg-type]



def test_a_key_pasted_as_a_virtual_key_name_is_not_echoed() -> None:
    """A key's name labels it in logs and metrics; a client's real key pasted there (twice:
    the error quoting the duplicate) was echoed by the ConfigError and the key's repr."""
    from ..support.canary import leaks, pasted_key, texts_of

    key = pasted_key("sk-proj-", 56)
    entry = {"name": key, "sha256": hash_key(TEAM_KEY)}
    with pytest.raises(ConfigError) as info:
        load_gateway_config({"keys": [entry, dict(entry)]})
    assert info.value.field == "gateway.keys[1].name"
    assert not leaks(texts_of(info.value), key)
    cfg = load_gateway_config({"keys": [entry]})
    assert not leaks([str(ConfigError(f"for {cfg.keys[0]!r}"))], key)
