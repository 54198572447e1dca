"""Discovery through the real entry point, configuration errors, the public API."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import squirrel_models_openai
from squirrel_models import ConfigError, ModelManager, PluginManager
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from .conftest import CANARY, CANARY_ENV


def test_plugin_is_installed() -> None:
    ours = [ep for ep in entry_points(group="squirrel_models")
            if ep.dist is not None and ep.dist.name == "squirrel-models-openai"]
    assert [ep.name for ep in ours] == ["openai"]
    pm = PluginManager(strict=True)
    assert "openai" in pm.provider_types()
    info = {p.name: p for p in pm.plugins()}["openai"]
    assert info.source == "entrypoint"
    assert set(info.hooks) == {"register_providers", "count_tokens"}


def test_public_api() -> None:
    assert sorted(squirrel_models_openai.__all__) == ["OpenAIOptions", "OpenAIProvider", "parse_usage"]


def _config(**options: object) -> dict[str, object]:
    return {"providers": [{"name": "oa", "type": "openai", "discover": False,
                           "options": options, "models": [{"name": "gpt-4o-mini"}]}]}


@pytest.mark.parametrize(("options", "field"), [
    ({"timeout": -1}, "providers[0].options.timeout"),
    ({"base_url": "ftp://x"}, "providers[0].options.base_url"),
    ({"base_url": "https://user:pw@host/v1"}, "providers[0].options.base_url"),
    ({"transport": "curl"}, "providers[0].options.transport"),
    ({"max_connections": 0}, "providers[0].options.max_connections"),
    ({"nope": 1}, "providers[0].options.nope"),
    ({"headers": {"Authorization": "Bearer x"}}, "providers[0].options.headers.Authorization"),
    ({"encoding": "gpt2"}, "providers[0].options.encoding"),
    ({"api_key_header": "api key"}, "providers[0].options.api_key_header"),
    ({"api_key_header": ""}, "providers[0].options.api_key_header"),
    ({"api_key_header": "api-key"}, "providers[0].options.api_key_header"),  # and no api_key_env
    # sent as headers: accepted, then every request failed in the HTTP client
    ({"organization": "org-1\nX-Injected: 1"}, "providers[0].options.organization"),
    ({"project": "caf\u00e9"}, "providers[0].options.project"),
    ({"project": 5}, "providers[0].options.project"),
])
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(**options))
    assert info.value.field == field, str(info.value)


def test_missing_key_variable_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQUIRREL_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(api_key_env="SQUIRREL_TEST_NO_SUCH_KEY"))
    assert info.value.field == "providers[0].options.api_key_env"
    assert "SQUIRREL_TEST_NO_SUCH_KEY" in str(info.value)


def test_the_key_header_may_not_be_set_twice(canary_env: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(_config(api_key_env=canary_env, api_key_header="X-Custom", headers={"x-custom": "v"}))
    assert info.value.field == "providers[0].options.headers.X-Custom", str(info.value)


def test_key_is_read_into_a_secret(canary_env: str) -> None:
    p = OpenAIProvider("oa", OpenAIOptions(api_key_env=canary_env))
    assert CANARY not in repr(p) + str(p) + repr(p.options) + repr(vars(p).get("_key"))
    assert p._key is not None and p._key.reveal() == CANARY


def test_manager_builds_the_provider(canary_env: str) -> None:
    mm = ModelManager(_config(api_key_env=CANARY_ENV, base_url="http://127.0.0.1:9/v1"))
    provider = mm.providers["oa"]
    assert isinstance(provider, OpenAIProvider)
    assert provider.options.base_url == "http://127.0.0.1:9/v1"
    assert CANARY not in repr(mm.providers)


def test_cli_connection_error_names_host_and_port(tmp_path) -> None:
    """The installed ``squirrel`` command, a server that is not there: one line naming
    where it tried, exit code 1."""
    import os
    import shutil
    import subprocess
    import sys

    from ..support.ports import closed_port

    squirrel = shutil.which("squirrel", path=os.path.dirname(sys.executable))
    assert squirrel is not None
    port = closed_port()
    (tmp_path / "squirrel.toml").write_text(f"""
[[providers]]
name = "oa"
type = "openai"
discover = false
options = {{ base_url = "http://127.0.0.1:{port}/v1" }}
models = [{{ name = "gpt-4o-mini", price = {{ input = "0.15", output = "0.6" }} }}]
[fallback]
max_attempts = 1
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUIRREL_")}
    for args in (["--no-stream"], ["--stream"]):
        r = subprocess.run([squirrel, "ask", "hi", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("Error")]
        assert line.startswith("Error: ProviderConnectionError: ")
        assert f"127.0.0.1:{port}" in line


def test_discovery_is_switched_in_one_place(caplog: pytest.LogCaptureFixture) -> None:
    """The [[providers]] entry's discover is the switch; the old options.discover still loads
    (false still turns discovery off) but says it is deprecated."""
    import logging

    off = ModelManager({"providers": [{"name": "oa", "type": "openai", "discover": False}]})
    assert off.providers["oa"]._discover is False  # type: ignore[attr-defined]
    on = ModelManager({"providers": [{"name": "oa", "type": "openai"}]})
    assert on.providers["oa"]._discover is True  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        old = ModelManager({"providers": [{"name": "oa", "type": "openai",
                                           "options": {"discover": False}}]})
    assert old.providers["oa"]._discover is False  # type: ignore[attr-defined]
    (said,) = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert "provider 'oa': options.discover is deprecated" in said and "discover = false" in said


def test_the_old_discover_option_contradicting_the_entry_is_refused() -> None:
    """``discover = false`` on the entry with ``options.discover = true``: the entry decided,
    and the option's true was ignored without a word."""
    with pytest.raises(ConfigError) as info:
        ModelManager({"providers": [{"name": "oa", "type": "openai", "discover": False,
                                     "options": {"discover": True}}]})
    assert info.value.field == "providers[0].options.discover"
    assert "disagrees with discover = false of its [[providers]] entry" in str(info.value)
