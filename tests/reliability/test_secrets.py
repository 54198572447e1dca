"""The canary key, configured for every provider, never shows while the error paths are
forced: upstream echoes of the key (401, a 400 echoing every header), every fault, the
configuration mistakes people make with keys, reprs, logs at every level, metrics and spans;
then the attack: a server echoing the key in every place an answer has (body, header, reason
phrase, error type and code, stream events, model listings), whole, in fragments and escaped,
through both plugins and both HTTP engines, and through the command line (stdout and stderr of
real processes); keys holding whitespace. Leaks are found by the secret scanner's rule
(``tests/support/secret_scanner.py``: any 8 characters of the key, or an escaped form).
(The load test also scans everything its thousands of requests produced.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import AIRequest, ModelManager, ModelRequirements, SquirrelError
from squirrel_models.errors import ConfigError

from ..support.faulty_server import FaultyServer, leak_behaviours
from . import compose
from .conftest import CANARY, CANARY_ENV, Everything, figure

pytestmark = pytest.mark.anyio

LEAKY = ["alpha/reset", "alpha/malformed", "alpha/rate-limit:0.05", "alpha/error:500", "alpha/hang",
         "beta/auth", "beta/truncate", "beta/stream-error", "beta/malformed-stream", "beta/error:400",
         "delta/hang-stream"]


async def test_canary_never_leaks(faulty: FaultyServer, canary_env: str, tmp_path: Path, squirrel_manager: Any,
                                  squirrel_metrics: Any, all_logs: Everything,
                                  caplog: pytest.LogCaptureFixture) -> None:
    texts: list[str] = []
    faulty.script("error:400", *["echo"] * 4)  # a server echoing every request header, key included
    async with squirrel_manager(compose.config(faulty, str(tmp_path / "s.sqlite3"))) as mm:
        texts += [repr(mm.providers), repr(mm.config), repr(list(mm.models.values())), repr(mm.plugins)]
        for model in LEAKY:
            for stream in (False, True):
                req = AIRequest.from_prompt(f"leak {model} {stream}", max_tokens=8)
                need = ModelRequirements(models={model, "gamma/ok"} if stream else {model})
                try:
                    if stream:
                        async with mm.stream(req, need, timeout=0.8) as s:
                            async for _ in s:
                                pass
                        texts.append(repr(s.response))
                    else:
                        texts.append(repr(await mm.complete(req, need, timeout=0.8)))
                except SquirrelError as exc:
                    texts += compose.texts_of(exc)
    # Configuration mistakes: the key itself where the variable's name belongs, or in a URL.
    for options in ({"api_key_env": CANARY}, {"base_url": f"http://user:{CANARY}@127.0.0.1:9/v1"},
                    {"base_url": f"http://127.0.0.1:9/v1?key={CANARY}"}, {"headers": {"Authorization": CANARY}}):
        cfg = compose.config(faulty, str(tmp_path / "c.sqlite3"))
        cfg["providers"][0]["options"].update(options)
        with pytest.raises(ConfigError) as info:
            ModelManager(cfg)
        texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
    assert any(h.get("authorization") == f"Bearer {CANARY}" for h in faulty.headers_seen)  # really sent
    texts += [r.getMessage() for r in caplog.records] + all_logs.texts + [squirrel_metrics.everything()]
    found = compose.leaks(texts)
    figure("secrets", texts_scanned=len(texts), leaks=len(found))
    assert not found, found[:2]


# --- the attack: every place and form an upstream can echo the key in, every engine --------

#: Every place with every form (an answer's text is the caller's data: see the CLI test).
EVERY_LEAK = leak_behaviours(every=True)
#: (provider type, option naming the key's variable, transport): both plugins, both engines
ROUTES = [("openai", "api_key_env", "auto"), ("openai", "api_key_env", "httpx"), ("huggingface", "token_env", None)]


def leaky_config(server: FaultyServer, ptype: str, key_option: str, transport: str | None,
                 models: list[str], **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"base_url": server.base_url, key_option: CANARY_ENV, "timeout": 0.5}
    if transport is not None:
        options["transport"] = transport
    entry: dict[str, Any] = {"name": "leaky", "type": ptype, "options": options,
                             "models": [{"name": m, "price": {"input": "1", "output": "1"}} for m in models]}
    if ptype == "openai":
        entry["discover"] = False
        options.update(prices_from=None, connect_timeout=0.5)
    return {"providers": [entry], "fallback": {"max_attempts": 2, "options": {"retry": {"base_delay": 0.01}}},
            "timeout": 3.0, **extra}


@pytest.mark.parametrize(("ptype", "key_option", "transport"), ROUTES, ids=["openai-auto", "openai-httpx", "hf"])
async def test_every_echo_of_the_key_is_redacted(faulty: FaultyServer, canary_env: str, squirrel_manager: Any,
                                                 squirrel_metrics: Any, all_logs: Everything,
                                                 caplog: pytest.LogCaptureFixture, ptype: str, key_option: str,
                                                 transport: str | None) -> None:
    """Bodies, headers, reason phrases, error type/code fields and stream events echo the key,
    whole, minus its last two characters, in halves, JSON- and repr-escaped, URL-encoded, as
    basic auth: every text the library produces is scanned, DEBUG logs of every library included."""
    texts: list[str] = []
    # The whole matrix through the default engine; each form in two places through the others.
    leaks = EVERY_LEAK if transport == "auto" else leak_behaviours()
    cfg = leaky_config(faulty, ptype, key_option, transport, leaks)
    async with squirrel_manager(cfg) as mm:
        for model in leaks:
            pin = ModelRequirements(models={f"leaky/{model}"})
            req = AIRequest.from_prompt(f"leak {model}", max_tokens=8)
            try:
                texts.append(repr(await mm.complete(req, pin)))
            except SquirrelError as exc:
                texts += compose.texts_of(exc)
            try:
                async with mm.stream(req, pin) as s:
                    async for _ in s:
                        pass
            except SquirrelError as exc:
                texts += compose.texts_of(exc)
    assert any(h.get("authorization") == f"Bearer {CANARY}" for h in faulty.headers_seen)  # really sent
    assert len(texts) >= 2 * len(leaks)
    texts += [r.getMessage() for r in caplog.records] + all_logs.texts + [squirrel_metrics.everything()]
    found = compose.leaks(texts)
    figure("secrets", texts_scanned=len(texts), leaks=len(found), leaky_requests=len(leaks) * 2)
    assert not found, found[:2]


BAD_KEYS = {"newline": CANARY + "\n", "crlf": CANARY + "\r\n", "leading-space": " " + CANARY,
            "inner-tab": CANARY[:8] + "\t" + CANARY[8:], "nbsp": CANARY + "\u00a0", "del": CANARY + "\x7f"}


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
@pytest.mark.parametrize(("ptype", "key_option"), [("openai", "api_key_env"), ("huggingface", "token_env")])
def test_a_key_with_whitespace_is_a_config_error_that_does_not_show_it(
        faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch, key: str, ptype: str, key_option: str) -> None:
    monkeypatch.setenv(CANARY_ENV, key)
    with pytest.raises(ConfigError) as info:
        ModelManager(leaky_config(faulty, ptype, key_option, None, ["ok"]))
    e = info.value
    assert e.field == f"providers[0].options.{key_option}"
    texts = compose.texts_of(e)
    assert CANARY_ENV in texts[0]
    found = compose.leaks(texts)
    figure("secrets", texts_scanned=len(texts), leaks=len(found))
    assert not found, found


# --- the command line ------------------------------------------------------------------------


def _toml(cfg: dict[str, Any]) -> str:
    """Just enough TOML for :func:`leaky_config`'s dictionaries."""
    p = cfg["providers"][0]
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in p["options"].items() if v is not None)
    lines = [f"timeout = {cfg['timeout']}", "[[providers]]", f'name = "{p["name"]}"', f'type = "{p["type"]}"',
             f"options = {{ {opts} }}"]
    if "discover" in p:
        lines.append(f"discover = {str(p['discover']).lower()}")
    for m in p["models"]:
        lines += ["[[providers.models]]", f"name = {json.dumps(m['name'])}", 'price = { input = "1", output = "1" }']
    lines += ["[fallback]", "max_attempts = 2"]
    return "\n".join(lines) + "\n"


def _patient(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with deadlines for a fresh process on a busy machine: these runs check what is
    printed, not timing. A new process compiles and imports its HTTP engine during its first
    request; at load 12 that took longer than :func:`leaky_config`'s 3 s deadline, and the
    run printed ``DeadlineExceeded`` instead of the answer or the 401 it was there to print."""
    p = cfg["providers"][0]
    options = {**p["options"], "timeout": 30.0}
    if "connect_timeout" in options:
        options["connect_timeout"] = 30.0
    return {**cfg, "timeout": 60.0, "providers": [{**p, "options": options}, *cfg["providers"][1:]]}


def _cli(tmp_path: Path, cfg: dict[str, Any], *args: str, env: dict[str, str]) -> list[str]:
    """Run ``squirrel`` in a process of its own (with :func:`_patient` deadlines); its stdout
    and stderr."""
    path = tmp_path / "squirrel.toml"
    path.write_text(_toml(_patient(cfg)))
    proc = subprocess.run([sys.executable, "-c", "from squirrel_models.cli import main; main()", *args,
                           "--config", str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)
    return [proc.stdout, proc.stderr, f"exit {proc.returncode}"]


def _cli_here(tmp_path: Path, cfg: dict[str, Any], *args: str) -> list[str]:
    """Run ``squirrel`` in this process (click's runner): its stdout and stderr."""
    from click.testing import CliRunner
    from squirrel_models.cli import cli

    path = tmp_path / "squirrel.toml"
    path.write_text(_toml(cfg))
    r = CliRunner().invoke(cli, [*args, "--config", str(path)])
    return [r.stdout, r.stderr, f"exit {r.exit_code}"]


#: Each place the server echoes the key in (answers too: ``body``), each form in two places.
CLI_LEAKS = [*leak_behaviours(body=True), "auth", "echo"]


def test_the_cli_never_prints_the_key(faulty_session: FaultyServer, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``squirrel ask`` (streamed and not) and ``squirrel models`` against a server echoing the
    key everywhere, answers and model listings included, and with a key holding a newline:
    stdout and stderr, in this process for every behaviour and in processes of their own (the
    real streams, tracebacks included) for a few."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    texts: list[str] = []
    # One model per run: the only candidate, so its failure is what the command prints.
    for model in CLI_LEAKS:
        one = leaky_config(faulty_session, "openai", "api_key_env", None, [model])
        for stream in ("--stream", "--no-stream"):
            texts += _cli_here(tmp_path, one, "ask", "hi", "--max-tokens", "8", stream)
    assert sum("Error: " in t for t in texts[1::3]) >= len(CLI_LEAKS)  # failures told on stderr
    for model, stream in (("leak:body.minus2", "--stream"), ("leak:type.json", "--no-stream")):
        one = leaky_config(faulty_session, "openai", "api_key_env", None, [model])
        texts += _cli(tmp_path, one, "ask", "hi", "--max-tokens", "8", stream, env={})
    assert "***" in texts[-6] and "Error: AuthenticationError: HTTP 401" in texts[-2]
    listing = FaultyServer(models=["ok", "leak-models.whole", "leak-models.minus2"]).start()
    try:
        cfg = leaky_config(listing, "openai", "api_key_env", None, ["ok"])
        cfg["providers"][0]["discover"] = True
        texts += _cli(tmp_path, cfg, "models", "--json", env={})
        texts += _cli_here(tmp_path, cfg, "models")
        texts += _cli(tmp_path, cfg, "models", env={CANARY_ENV: CANARY + "\n"})
    finally:
        listing.stop()
    assert "providers[0].options.api_key_env" in texts[-2]
    assert any("***" in t for t in texts[::3])  # answers and listings echoing the key: printed masked
    found = compose.leaks(texts)
    figure("secrets", texts_scanned=len(texts), leaks=len(found), cli_runs=len(texts) // 3)
    assert not found, found[:2]


def test_the_scanner_flags_key_shaped_text_that_is_no_canary() -> None:
    """A key a user pasted into a field that is not a secret is no canary of ours, yet must
    never show: the scanner flags text shaped like a provider's key or token too (by its own
    rule, not the library's), and never a model id or a field name."""
    from ..support import secret_scanner

    google = "AIza" + "Sy" + "B3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z0Abcd"
    keys = ["sk-proj-" + "Q7d2LwB9xk4" * 5, "hf_" + "AbCdEfGhIj" * 4, "gsk_" + "Xy9" * 16,
            google, "AKIA" + "ABCDEFGH23456777", "Bearer " + "d41d8cd98f00b204e9800998ecf8427e",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlX2hlcmU"]
    for key in keys:
        text = f"providers[0].options.headers: {key!r} is not a header name"
        assert len(secret_scanner.key_shaped(text)) == 1, key
        shown = secret_scanner.mask(text)
        assert "[MASKED]" in shown and key.removeprefix("Bearer ")[-12:] not in shown
    ordinary = ("gpt-4o-mini-2024-07-18 meta-llama/Llama-3.1-8B-Instruct sk-learn-regressor-2024-07-18 "
                "hf_hub_download Authorization: Bearer <key> budget.limits[0].scope")
    assert secret_scanner.key_shaped(ordinary) == []


def test_the_scanner_finds_a_canary_piece_at_any_offset() -> None:
    """The scanner looks up only the starts near a run of its aligned grid that belongs to a
    canary (not every start): a piece of FRAGMENT characters or more, at any offset in any
    text, is still found whole, from its first character to its last."""
    import random

    from ..support import secret_scanner

    # its own letters: a piece shared with another canary of the session would carry that label
    key = secret_scanner.canary("gridQ7xW2vJ9mK4pZ8rT6nB3yH5cL1dF0", "grid canary")
    rng = random.Random(3)
    for _ in range(400):
        a = rng.randint(0, len(key) - secret_scanner.FRAGMENT)
        b = rng.randint(a + secret_scanner.FRAGMENT, len(key))
        before = "".join(rng.choices("| ,;", k=rng.randint(0, 9)))
        text = before + key[a:b] + "".join(rng.choices("| ,;", k=rng.randint(0, 9)))
        runs = [(s, e) for s, e, _ in secret_scanner._canary_runs(text)]
        assert runs == [(len(before), len(before) + b - a)], (text, runs)
        assert "[MASKED]" in secret_scanner.mask(text)
