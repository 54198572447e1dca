"""The tutorial's example plugin (docs/example-plugin): installed, discovered through its real
entry point, serving real requests through ModelManager, and conforming to the provider suite.

The "models" are small Python programs run with the current interpreter, so the tests need
nothing but Python.
"""

from __future__ import annotations

import os
import sys
import textwrap
from decimal import Decimal
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import anyio
import pytest
from squirrel_models import (
    AIRequest,
    ConfigError,
    Message,
    MidStreamError,
    ModelManager,
    ProviderConnectionError,
    ProviderSpec,
    ProviderTimeout,
    ServerError,
    TextPart,
    UnpricedModel,
)
from squirrel_models.plugins import PluginManager
from squirrel_models.testing.conformance import ProviderConformance
from squirrel_models.tokens import upper_bound
from squirrel_models_command import CommandOptions, CommandProvider

pytestmark = pytest.mark.anyio

UPPER = "import sys; sys.stdout.write(sys.stdin.read().upper())"
REVERSE_ARG = "import sys; print(sys.argv[1][::-1])"
FREE = {"input": 0, "output": 0}


def py(source: str) -> list[str]:
    """A command running ``source`` with this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(source)]


def config(command: list[str], *models: dict[str, Any], budget: str | None = None,
           max_attempts: int = 1, **options: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "providers": [{"name": "local", "type": "command",
                       "options": {"command": command, **options}, "models": list(models)}],
        "fallback": {"max_attempts": max_attempts,
                     "options": {"retry": {"base_delay": 0.001}}},
    }
    if budget is not None:
        cfg["budget"] = {"limits": [{"scope": "global", "limit": budget}]}
    return cfg


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not count)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def hang_writing_pid(pidfile: Path) -> list[str]:
    """A program that writes its pid to ``pidfile`` at once, then hangs."""
    return ["sh", "-c", f"echo $$ > '{pidfile}'; exec sleep 60"]


async def wait_dead(*pids: int) -> bool:
    with anyio.move_on_after(5):
        while any(alive(p) for p in pids):
            await anyio.sleep(0.02)
    return not any(alive(p) for p in pids)


# --- discovery through the real entry point ------------------------------------------------


def test_distribution_declares_exactly_one_entry_point() -> None:
    dist = distribution("squirrel-models-command")
    ours = [ep for ep in dist.entry_points if ep.group == "squirrel_models"]
    assert [(ep.name, ep.value) for ep in ours] == [("command", "squirrel_models_command")]
    assert "command" in {ep.name for ep in entry_points(group="squirrel_models")}


def test_plugin_is_discovered_through_its_entry_point() -> None:
    pm = PluginManager()
    assert "command" in pm.provider_types()
    info = {i.name: i for i in pm.plugins()}["command"]
    assert info.source == "entrypoint"
    assert info.dist == "squirrel-models-command"
    assert info.hooks == ("register_providers",)
    assert pm.provider_types()["command"].options_type is CommandOptions
    assert not pm.failures


# --- configuration ---------------------------------------------------------------------------


def test_missing_program_fails_at_startup_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(config(["no-such-program-squirrel-xyz", "--flag"]))
    assert info.value.field == "providers[0].options.command"
    assert "no-such-program-squirrel-xyz" in str(info.value)


def test_missing_program_of_one_model_names_its_command() -> None:
    cfg = config(py(UPPER), {"name": "a"}, {"name": "b"},
                 commands={"b": ["/nonexistent/bin/model"]})
    with pytest.raises(ConfigError) as info:
        ModelManager(cfg)
    assert info.value.field == "providers[0].options.commands.b"


@pytest.mark.parametrize(("options", "field"), [
    ({"bogus": 1}, "providers[0].options.bogus"),
    ({"timeout": 0}, "providers[0].options.timeout"),
    ({"timeout": "10"}, "providers[0].options.timeout"),
    ({"prompt_via": "pipe"}, "providers[0].options.prompt_via"),
    ({"command": []}, "providers[0].options.command"),
])
def test_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    cfg = config(py(UPPER))
    cfg["providers"][0]["options"].update(options)
    with pytest.raises(ConfigError) as info:
        ModelManager(cfg)
    assert info.value.field == field


def test_prompt_placeholder_needs_argument_mode() -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(config([*py(REVERSE_ARG), "{prompt}"]))
    assert info.value.field == "providers[0].options.command"
    assert "prompt_via" in str(info.value)


def test_models_come_from_config_and_unknown_price_stays_unknown() -> None:
    cfg = config(py(UPPER), {"name": "priced", "price": {"input": "1", "output": "2"},
                             "context_window": 8192, "tags": ["local"]},
                 {"name": "unpriced"})
    provider = ModelManager(cfg).providers["local"]
    assert isinstance(provider, CommandProvider)
    cards = {c.model: c for c in provider.models}
    assert cards["priced"].price is not None and cards["priced"].price.output == Decimal(2)
    assert cards["priced"].context_window == 8192 and cards["priced"].tags == {"local"}
    assert cards["unpriced"].price is None
    assert cards["unpriced"].provider_type == "command"
    assert {"streaming", "stop"} <= cards["unpriced"].features


def test_default_model_is_named_after_the_program(tmp_path: Path) -> None:
    script = tmp_path / "my-model.sh"
    script.write_text("#!/bin/sh\ncat\n")
    script.chmod(0o755)
    provider = ModelManager(config([str(script)])).providers["local"]
    assert [c.id for c in provider.models] == ["local/my-model"]  # type: ignore[attr-defined]


def test_bad_card_value_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        ModelManager(config(py(UPPER), {"name": "m", "quality": 2}))
    assert info.value.field == "providers[0].models[0].quality"


# --- real requests through ModelManager ------------------------------------------------------


async def test_complete_through_the_manager(squirrel_manager) -> None:
    cfg = config(py(UPPER), {"name": "upper", "price": {"input": "1", "output": "3"}},
                 budget="1")
    request = AIRequest.from_prompt("hello, squirrel", max_tokens=100)
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(request)
        assert mm.budget_backend.open_reservations == 0
    assert resp.text == "HELLO, SQUIRREL"
    assert resp.model == "local/upper"
    assert resp.finish_reason == "stop"
    assert resp.usage.source == "estimated"
    assert resp.usage.input_tokens == upper_bound(request).tokens
    assert resp.usage.output_tokens == len(b"HELLO, SQUIRREL")
    card = mm.models["local/upper"]
    assert resp.cost == card.price.cost(resp.usage)
    assert [a.outcome for a in resp.attempts] == ["ok"]


@pytest.mark.parametrize(("prompt_format", "seen"), [
    ("plain", "HELLO, SQUIRREL"), ("transcript", "USER: HELLO, SQUIRREL"),
    ("json", '[{"ROLE": "USER", "CONTENT": "HELLO, SQUIRREL"}]')])
async def test_a_message_of_text_parts_is_sent_as_its_text(squirrel_manager, prompt_format: str,
                                                           seen: str) -> None:
    """A message whose content is a tuple of text parts was a TypeError out of render_prompt
    (it joined ``m.content``), not even a SquirrelError."""
    cfg = config(py(UPPER), {"name": "upper", "price": FREE}, prompt_format=prompt_format)
    request = AIRequest(messages=[Message("user", (TextPart("hello, "), TextPart("squirrel")))], max_tokens=100)
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(request)
    assert resp.text == seen


async def test_prompt_as_argument_and_formats(squirrel_manager) -> None:
    cfg = config([*py(REVERSE_ARG), "{prompt}"], {"name": "rev", "price": FREE},
                 prompt_via="argument")
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(AIRequest.from_prompt("abc def"))
    assert resp.text == "fed cba"

    roles = py("""
        import json, sys
        print(",".join(m["role"] + "=" + m["content"] for m in json.load(sys.stdin)))
    """)
    cfg = config(roles, {"name": "json", "price": FREE}, prompt_format="json")
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(AIRequest.from_prompt("hi", system="be brief"))
    assert resp.text == "system=be brief,user=hi"


async def test_max_tokens_placeholder_and_env(squirrel_manager) -> None:
    show = [*py("import os, sys; print(sys.argv[1], os.environ['GREETING'])"), "{max_tokens}"]
    cfg = config(show, {"name": "m", "price": FREE}, env={"GREETING": "sk-hello-canary"})
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(AIRequest.from_prompt("x", max_tokens=40))
        assert "sk-hello-canary" not in repr(mm.providers["local"])
    assert resp.text == "40 sk-hello-canary"


async def test_stream_reads_output_as_it_arrives(squirrel_manager) -> None:
    slow = py("""
        import sys, time
        for word in ("one ", "two ", "three"):
            sys.stdout.write(word); sys.stdout.flush(); time.sleep(0.15)
    """)
    cfg = config(slow, {"name": "slow", "price": FREE}, budget="1")
    async with squirrel_manager(cfg) as mm, mm.stream(AIRequest.from_prompt("count", max_tokens=100)) as s:
        texts = [chunk.text async for chunk in s if chunk.text]
    assert texts == ["one ", "two ", "three"]
    assert s.response is not None
    assert s.response.text == "one two three"
    assert s.response.usage.output_tokens == len("one two three")
    assert s.response.usage.source == "estimated"


async def test_stop_sequence_split_across_reads_ends_the_answer(squirrel_manager) -> None:
    split = py("""
        import sys, time
        sys.stdout.write("hello ST"); sys.stdout.flush(); time.sleep(0.15)
        sys.stdout.write("OP world"); sys.stdout.flush(); time.sleep(30)
    """)
    cfg = config(split, {"name": "m", "price": FREE})
    with anyio.fail_after(10):
        async with squirrel_manager(cfg) as mm:
            resp = await mm.complete(AIRequest.from_prompt("go", stop=["STOP"]))
    assert resp.text == "hello "
    assert resp.finish_reason == "stop"


async def test_output_is_cut_at_the_budget_so_settlement_fits_the_reservation(
        squirrel_manager, squirrel_metrics) -> None:
    chatty = py("import sys; sys.stdout.write('x' * 5000)")
    cfg = config(chatty, {"name": "m", "price": {"input": "1", "output": "1"}}, budget="1")
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(AIRequest.from_prompt("talk", max_tokens=10))
    assert resp.text == "x" * 10
    assert resp.finish_reason == "length"
    assert resp.usage.output_tokens == 10
    assert squirrel_metrics.total("squirrel.budget.overspend") == 0


async def test_without_enforcement_the_excess_is_charged_not_hidden(
        squirrel_manager, squirrel_metrics) -> None:
    chatty = py("import sys; sys.stdout.write('x' * 5000)")
    cfg = config(chatty, {"name": "m", "price": {"input": "1", "output": "1"}}, budget="1",
                 enforce_max_tokens=False)
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(AIRequest.from_prompt("talk", max_tokens=10))
    assert len(resp.text) == 5000
    assert resp.usage.output_tokens == 5000
    assert squirrel_metrics.total("squirrel.budget.overspend") > 0


async def test_unpriced_model_refused_under_a_budget(squirrel_manager) -> None:
    async with squirrel_manager(config(py(UPPER), {"name": "m"}, budget="1")) as mm:
        with pytest.raises(UnpricedModel):
            await mm.complete(AIRequest.from_prompt("hi"))
    cfg = config(py(UPPER), {"name": "m"}, budget="1")
    cfg["budget"]["allow_unpriced"] = True
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(AIRequest.from_prompt("hi"))
    assert resp.text == "HI"
    assert resp.cost is None


# --- failures map to the core's types --------------------------------------------------------


async def test_nonzero_exit_is_a_server_error_with_the_stderr_tail(squirrel_manager) -> None:
    failing = py("""
        import sys
        sys.stderr.write("loading weights\\n" * 500 + "fatal: out of memory\\n")
        sys.exit(3)
    """)
    async with squirrel_manager(config(failing, {"name": "m", "price": FREE})) as mm:
        with pytest.raises(ServerError) as info:
            await mm.complete(AIRequest.from_prompt("hi"))
    message = str(info.value)
    assert "exited with status 3" in message
    assert "fatal: out of memory" in message
    assert len(message) < 1200  # a tail, not the whole log
    assert info.value.model_id == "local/m"


async def test_timeout_is_a_provider_timeout_and_kills_the_program(squirrel_manager,
                                                                    tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    cfg = config(hang_writing_pid(pidfile), {"name": "m", "price": FREE}, timeout=0.5)
    with anyio.fail_after(10):
        async with squirrel_manager(cfg) as mm:
            with pytest.raises(ProviderTimeout):
                await mm.complete(AIRequest.from_prompt("hi"))
    assert await wait_dead(int(pidfile.read_text()))


async def test_program_that_cannot_start_is_a_connection_error(squirrel_manager,
                                                                tmp_path: Path) -> None:
    script = tmp_path / "model.sh"
    script.write_text("#!/bin/sh\ncat\n")
    script.chmod(0o755)
    async with squirrel_manager(config([str(script)], {"name": "m", "price": FREE})) as mm:
        script.unlink()  # gone after start-up
        with pytest.raises(ProviderConnectionError):
            await mm.complete(AIRequest.from_prompt("hi"))


async def test_failure_after_first_chunk_is_mid_stream_and_charged(squirrel_manager) -> None:
    broken = py("""
        import sys, time
        sys.stdout.write("partial answer"); sys.stdout.flush(); time.sleep(0.1)
        sys.stderr.write("segfault"); sys.exit(139)
    """)
    cfg = config(broken, {"name": "m", "price": {"input": "1", "output": "1"}}, budget="1")
    async with squirrel_manager(cfg) as mm:
        with pytest.raises(MidStreamError) as info:
            async with mm.stream(AIRequest.from_prompt("hi", max_tokens=100)) as s:
                async for _ in s:
                    pass
        assert mm.budget_backend.open_reservations == 0
    assert info.value.partial_text == "partial answer"
    assert info.value.usage is not None
    assert info.value.usage.output_tokens == len("partial answer")
    assert info.value.usage.source == "estimated"
    assert "segfault" in str(info.value)


async def test_failing_model_falls_back_to_the_next(squirrel_manager) -> None:
    cfg = config(py(UPPER), {"name": "good", "price": {"input": "1", "output": "1"}},
                 {"name": "broken", "price": FREE}, max_attempts=3,
                 commands={"broken": py("import sys; sys.exit(1)")})
    async with squirrel_manager(cfg) as mm:
        resp = await mm.complete(AIRequest.from_prompt("fine"))
    assert resp.text == "FINE"
    assert resp.model == "local/good"
    assert resp.attempts[0].model_id == "local/broken"  # cheaper, so ranked first
    assert resp.attempts[-1].outcome == "ok"


# --- cancellation kills the process ----------------------------------------------------------


CHILD_AND_SLEEP = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sys.stdout.write(f"{os.getpid()} {child.pid}\\n"); sys.stdout.flush()
    time.sleep(60)
"""


async def test_closing_a_stream_early_kills_the_program_and_its_children(squirrel_manager
                                                                         ) -> None:
    cfg = config(py(CHILD_AND_SLEEP), {"name": "m", "price": FREE})
    with anyio.fail_after(10):
        async with squirrel_manager(cfg) as mm:
            async with mm.stream(AIRequest.from_prompt("hi")) as s:
                async for chunk in s:
                    if chunk.text.strip():
                        pids = [int(p) for p in chunk.text.split()]
                        break
            assert mm.providers["local"].running["m"] == 0  # type: ignore[attr-defined]
    assert await wait_dead(*pids)
    assert s.response is not None and s.response.text.strip() == " ".join(map(str, pids))


async def test_cancelling_a_request_kills_the_program(squirrel_manager, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    cfg = config(hang_writing_pid(pidfile), {"name": "m", "price": FREE}, budget="1")
    async with squirrel_manager(cfg) as mm:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(mm.complete, AIRequest.from_prompt("hi"))
                while not pidfile.exists() or not pidfile.read_text().strip():
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        assert mm.budget_backend.open_reservations == 0
    assert await wait_dead(int(pidfile.read_text()))


def children_named(name: str) -> list[int]:
    """This process's children called ``name``, running or exited but not yet reaped."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
        if comm == name[:15] and rest.split()[1] == me:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_cancelled_while_the_program_starts_it_is_killed_and_reaped(tmp_path: Path
                                                                          ) -> None:
    """Cancelled at any point of an attempt, starting the program included, the attempt has
    killed and reaped the program before the cancellation returns. A cancellation while
    asyncio connected the new program's pipes used to leave it to asyncio, which killed the
    program alone (not its group), reaped it after the call returned and left its pipes
    open: when the loop closed first, the next test failed on the ``Popen`` still running
    (``test_cancelling_a_request_kills_the_program[trio]``, 1 run in 30 under load)."""
    script = tmp_path / "squirrel-hang"
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(0o755)
    provider = CommandProvider.from_spec(
        ProviderSpec("local", "command", CommandOptions(command=(str(script),))))
    [card] = await provider.list_models()
    for checkpoints in range(40):
        async with anyio.create_task_group() as tg:
            tg.start_soon(provider.complete, card, AIRequest.from_prompt("hi"))
            for _ in range(checkpoints):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        left = children_named(script.name)
        assert not left, f"cancelled after {checkpoints} checkpoints, {left} not reaped"
        assert not provider.running[card.model]
    await provider.aclose()


# --- the core's provider conformance suite ---------------------------------------------------


class TestCommandProviderConformance(ProviderConformance):
    @pytest.fixture
    def secrets(self) -> list[str]:
        return ["sk-conformance-canary"]

    @pytest.fixture
    async def provider(self):
        options = CommandOptions(command=tuple(py(UPPER)),
                                 env={"API_KEY": "sk-conformance-canary"})
        p = CommandProvider.from_spec(ProviderSpec("local", "command", options))
        yield p
        await p.aclose()
        assert not any(p.running.values())
