"""The ``squirrel`` command line: plugins, models, select, ask, usage, budget, ledger prune,
plugin new.

Every command takes ``--config FILE`` (else ``$SQUIRREL_CONFIG``, ``./squirrel.toml``, or the
embedded default), ``--format`` (``--json`` is short for ``--format json``), ``-v/--verbose``
and ``-q/--quiet``. docs/cli.md is the reference.

Errors print one line (``Error: <type>: <message>``) on standard error, or with JSON output a
JSON object ``{"error": {...}}`` on standard output, and exit with:

====  ==================================================================================
0     success
1     the request or operation failed (upstream errors, budget refusals, deadlines)
2     bad configuration, plugin or command-line input (also click's usage errors)
3     no model meets the requirements
130   interrupted (Ctrl-C)
====  ==================================================================================
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from .cliframe import EXIT_FAILED as EXIT_FAILED
from .cliframe import (
    EXIT_NO_MODEL,
    EXIT_USAGE,
    MAX_DAYS,
    CLIError,
    Day,
    Dollars,
    PositiveFloat,
    WholeNumber,
    _echo_csv,
    _echo_json,
    _Group,
    _plugin_manager,
    _price,
    _quiet,
    _redact_output,
    _run,
    money,
    output_options,
    quiet_option,
    root_config_option,
    verbose_option,
)
from .cliframe import EXIT_OK as EXIT_OK
from .cliframe import config_option as config_option


def _manager(config: str | None) -> Any:
    from .config import load_toml
    from .defaults import default_config, find_config, noting_the_default
    from .manager import ModelManager

    pm = _plugin_manager()
    path = find_config(config)
    cfg = load_toml(path) if path else default_config(pm)
    with noting_the_default(path):
        return ModelManager(cfg, plugins=pm)


# --- commands ------------------------------------------------------------------------------


@click.group(cls=_Group)
@click.version_option(package_name="squirrel-models")
@root_config_option
@verbose_option
@quiet_option
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Route AI requests to the right model, reliably and within budget.

    Exit codes: 0 success, 1 the request or operation failed, 2 bad configuration or input,
    3 no model meets the requirements, 130 interrupted (Ctrl-C). See docs/cli.md.
    """
    restore = _redact_output()
    if restore is not None:
        ctx.call_on_close(restore)


class _NotSkipLines(logging.Filter):
    """Drops the plugin manager's "plugin X skipped: why" lines (``squirrel plugins`` shows
    each as a row)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("plugin %r skipped")


@cli.command()
@output_options("table", "json")
def plugins(config: str | None, fmt: str) -> None:
    """Installed plugins: what each provides, and any disabled or failed to load."""
    from .plugins import PluginManager

    strict = _plugin_manager().strict
    # Listing is a diagnosis: load everything, strict or not, and show failures as rows
    # rather than as log lines (so each is printed once). Only those lines are held back:
    # a warning about the environment and the hook trace (SQUIRREL_TRACE_PLUGINS, -vv) are
    # what an author debugging a plugin runs this command for.
    pm = PluginManager(strict=False)
    plog = logging.getLogger("squirrel_models.plugins")
    rows_instead = _NotSkipLines()
    plog.addFilter(rows_instead)
    try:
        infos = pm.plugins()
        contrib = pm.contributions()
    finally:
        plog.removeFilter(rows_instead)
    rows: list[dict[str, Any]] = []
    for i in infos:
        adds = contrib.get(i.name, {})
        rows.append({"name": i.name, "status": "loaded", "source": i.source,
                     "dist": i.dist, "version": i.version, "description": i.description,
                     "provides": {k: v for k, v in adds.items() if v}, "hooks": list(i.hooks),
                     "reason": None})
    for name, why in pm.disabled:
        rows.append({"name": name, "status": "disabled", "source": None, "dist": None,
                     "version": None, "description": "", "provides": {}, "hooks": [],
                     "reason": why})
    for name, why in pm.failures:
        rows.append({"name": name, "status": "failed", "source": None, "dist": None,
                     "version": None, "description": "", "provides": {}, "hooks": [],
                     "reason": why})
    provided: dict[str, list[str]] = {"providers": [], "budget_backends": [],
                                      "ratelimit_stores": [], "breaker_stores": [],
                                      "scoring_rules": [], "fallback_strategies": []}
    for adds in contrib.values():
        for k, v in adds.items():
            provided.setdefault(k, []).extend(v)
    provided = {k: sorted(set(v)) for k, v in provided.items()}
    if fmt == "json":
        _echo_json({"plugins": rows, "provides": provided,
                    "disabled": [list(x) for x in pm.disabled],
                    "failures": [list(x) for x in pm.failures]})
    else:
        click.echo(f"{'PLUGIN':<26} {'STATUS':<9} {'FROM':<34} DESCRIPTION / PROVIDES")
        for r in rows:
            where = (f"{r['dist']} {r['version']}" if r["dist"] else
                     "squirrel-models (built in)" if r["source"] == "builtin" else
                     r["source"] or "-")
            gives = "; ".join(f"{k.replace('_', ' ')}: {', '.join(v)}"
                              for k, v in r["provides"].items())
            text = r["reason"] if r["status"] != "loaded" else " - ".join(
                x for x in (r["description"], gives) if x) or ", ".join(r["hooks"])
            click.echo(f"{r['name']:<26} {r['status']:<9} {where:<34} {text}")
        click.echo()
        for k, v in provided.items():
            click.echo(f"{k.replace('_', ' ')}: {', '.join(v) or '-'}")
    if strict and pm.failures:
        raise CLIError(f"{len(pm.failures)} plugin(s) failed to load and "
                       "SQUIRREL_STRICT_PLUGINS is set", EXIT_USAGE, "PluginError")


MODEL_COLUMNS = ("id", "provider", "type", "context_window", "max_output_tokens",
                 "price_input_per_mtok", "price_output_per_mtok", "capabilities", "features",
                 "quality", "tags", "enabled")


@cli.command()
@output_options("table", "json", "csv")
def models(config: str | None, fmt: str) -> None:
    """Registered models: capabilities, context window, output limit and price (unknown shown as unknown)."""

    async def go() -> None:
        async with _manager(config) as mm:
            cards = list(mm.models.values())
            off = mm.disabled
            configured = bool(mm.config.providers)
        if not cards and not _quiet():  # an empty table alone reads as a broken install
            click.echo("note: no model is registered: " + (
                "the configured providers listed none" if configured else
                "the configuration has no [[providers]] entry (docs/quickstart.md has a first "
                "squirrel.toml)"), err=True)
        if fmt == "json":
            _echo_json([{
                "id": c.id, "provider": c.provider, "type": c.provider_type,
                "capabilities": sorted(c.capabilities), "features": sorted(c.features),
                "context_window": c.context_window, "max_output_tokens": c.max_output_tokens,
                "price_per_mtok": None if c.price is None else {
                    "input": money(c.price.input), "output": money(c.price.output),
                    "cached_input": money(c.price.cached_input),
                    **({"tiers": [{"above": t.above, "input": money(t.input), "output": money(t.output),
                                   "cached_input": money(t.cached_input)} for t in c.price.tiers]}
                       if c.price.tiers else {})},
                "quality": c.quality, "tags": sorted(c.tags),
                "enabled": c.id not in off} for c in cards])
            return
        if fmt == "csv":
            _echo_csv([{
                "id": c.id, "provider": c.provider, "type": c.provider_type,
                "context_window": c.context_window, "max_output_tokens": c.max_output_tokens,
                "price_input_per_mtok": money(c.price.input) if c.price else None,
                "price_output_per_mtok": money(c.price.output) if c.price else None,
                "capabilities": sorted(c.capabilities), "features": sorted(c.features),
                "quality": c.quality, "tags": sorted(c.tags),
                "enabled": c.id not in off} for c in cards], MODEL_COLUMNS)
            return
        click.echo(f"{'model':<44} {'context':>8} {'output':>8}  {'price in/out per 1M':<24} capabilities")
        for c in cards:
            caps = ", ".join(sorted(c.capabilities | c.features))
            output = "-" if c.max_output_tokens is None else str(c.max_output_tokens)
            if c.id in off:
                caps = f"DISABLED (enabled = false)  {caps}"
            click.echo(f"{c.id:<44} {c.context_window:>8} {output:>8}  {_price(c):<24} {caps}")

    _run(go)


def _resolve_models(mm: Any, names: tuple[str, ...]) -> frozenset[str]:
    """``-m`` values as model ids: an id, or a name that one registered id ends with."""
    from .errors import shown

    ids = []
    for name in names:
        if name in mm.models:
            ids.append(name)
            continue
        matches = [m for m in mm.models if m.rsplit("/", 1)[-1] == name]
        if len(matches) == 1:
            ids.append(matches[0])
            continue
        hint = (f"it matches {', '.join(sorted(matches))}: give the full id" if matches
                else "`squirrel models` lists the registered ones")
        raise click.BadParameter(f"no model {shown(name, 200)} is registered; {hint}",
                                 param_hint="'-m' / '--model'")
    return frozenset(ids)


def _budget_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--key``: a budget key a request can carry (an empty one, a line break or a NUL was
    listed as ``key:`` scopes no request has, split the lines, or reached the store)."""
    from .fieldchecks import budget_key_problem

    if value is not None and (why := budget_key_problem(value)) is not None:
        raise click.BadParameter(f"the budget key {why}", param_hint="'--key'")
    return value


def _check_providers(mm: Any, names: tuple[str, ...]) -> frozenset[str]:
    """``--provider`` values, each a configured provider (else every model was excluded as
    "provider x not allowed", exit 3, for a typo)."""
    from .errors import shown

    known = {pc.name for pc in mm.config.providers} | set(mm.providers)
    for name in names:
        if name not in known:
            raise click.BadParameter(f"no provider {shown(name, 200)} is configured; configured: "
                                     f"{', '.join(sorted(known)) or 'none'}",
                                     param_hint="'--provider'")
    return frozenset(names)


def _requirements(mm: Any, *, capability: tuple[str, ...], feature: tuple[str, ...],
                  max_cost_per_1k: Decimal | None, max_latency_ms: float | None,
                  provider: tuple[str, ...], tag: tuple[str, ...], max_cost: Decimal | None,
                  model: tuple[str, ...]) -> Any:
    """The configuration's ``[requirements]`` with each field given on the command line
    replaced by the flag's value."""
    import attrs

    changes: dict[str, Any] = {}
    if capability:
        changes["min_capabilities"] = frozenset(capability)
    if feature:
        changes["required_features"] = frozenset(feature)
    if max_cost_per_1k is not None:
        changes["max_cost_per_1k_tokens"] = max_cost_per_1k
    if max_latency_ms is not None:
        changes["max_latency_ms"] = max_latency_ms
    if provider:
        changes["providers"] = _check_providers(mm, provider)
    if tag:
        changes["tags"] = frozenset(tag)
    if max_cost is not None:
        changes["max_request_cost"] = max_cost
    if model:
        changes["models"] = _resolve_models(mm, model)
    return attrs.evolve(mm.config.requirements, **changes)


def requirement_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("-m", "--model", multiple=True, metavar="ID",
                     help="Use this model (an id, or a name if only one model has it; "
                          "repeatable: the allowed set)."),
        click.option("--capability", multiple=True, help="Required capability (repeatable)."),
        click.option("--feature", multiple=True, help="Required feature (repeatable)."),
        click.option("--max-cost-per-1k", type=Dollars(), default=None,
                     help="Ceiling on a model's price, USD per 1k tokens."),
        click.option("--max-latency-ms", type=PositiveFloat(), default=None,
                     help="Ceiling on a model's observed latency."),
        click.option("--provider", multiple=True, help="Allowed provider (repeatable)."),
        click.option("--tag", multiple=True, help="Required tag (repeatable)."),
        click.option("--max-cost", type=Dollars(), default=None,
                     help="Per-request worst-case ceiling, USD."),
    ]):
        fn = opt(fn)
    return fn


@cli.command()
@output_options("table", "json", "csv")
@requirement_options
@click.option("--prompt", default=None, help="Size the ranking for this prompt.")
@click.option("--max-tokens", type=WholeNumber(1), default=None,
              help="With --prompt: the request's output cap.")
@click.option("--key", "budget_key", default=None, callback=_budget_key,
              help="With --prompt: the caller's key (its rate limits apply).")
@click.option("--explain", is_flag=True, help="Show the ranking table and exclusions.")
def select(config: str | None, fmt: str, prompt: str | None, max_tokens: int | None,
           budget_key: str | None, explain: bool, **req: Any) -> None:
    """Which model a request would go to, and why.

    Uses the configuration's [requirements]; each flag given replaces that one field.
    With --prompt (and --max-tokens, --key) the ranking is sized for that request: models
    whose context window or rate limits can never take it are excluded, with the reason.
    Exits 3 when no model meets the requirements.
    """
    from .types import AIRequest

    if prompt is not None and not prompt.strip():
        # before, an empty --prompt ranked for no request at all, silently
        raise click.UsageError("--prompt is empty: give the request's text, or leave --prompt "
                               "out to rank for no particular request")
    if not prompt and (max_tokens is not None or budget_key is not None):
        raise click.UsageError("--max-tokens and --key describe a request: give --prompt too")

    async def go() -> Any:
        async with _manager(config) as mm:
            request = AIRequest.from_prompt(prompt, max_tokens=max_tokens,
                                            budget_key=budget_key) if prompt else None
            return mm.rank(_requirements(mm, **req), request)

    decision = _run(go)
    chosen = decision.chosen
    if fmt == "json":
        _echo_json({"chosen": chosen.card.id if chosen else None, **decision.to_dict()})
    elif fmt == "csv":
        rules = list(decision.weights)
        _echo_csv([{"rank": i, "model": c.card.id, "score": round(c.score, 6),
                    **{r: round(c.scores.get(r, 0.0), 6) for r in rules}}
                   for i, c in enumerate(decision.candidates, 1)],
                  ["rank", "model", "score", *rules])
    else:
        if chosen is None:
            click.echo("no model meets the requirements")
        else:
            click.echo(f"{chosen.card.id}: {decision.reason()}")
        if explain or chosen is None:
            click.echo(decision.explain())
    if chosen is None:
        click.get_current_context().exit(EXIT_NO_MODEL)


def _read_prompt(prompt: str | None) -> str:
    """PROMPT, or standard input for ``-`` or when standard input is not a terminal."""
    stdin = sys.stdin
    if prompt is None or prompt == "-":
        if prompt is None and stdin.isatty():
            raise click.UsageError("missing PROMPT: give it as an argument, or '-' (or a pipe) "
                                   "to read it from standard input")
        prompt = stdin.read()
    if not prompt.strip():
        raise click.UsageError("the prompt is empty")
    return prompt


def _attempt(a: Any) -> dict[str, Any]:
    from .secrets import redact

    return {"number": a.number, "model": a.model_id, "outcome": a.outcome,
            "error_type": None if a.error is None else type(a.error).__name__,
            "error": None if a.error is None else redact(str(a.error)),
            "cost_usd": money(a.cost)}


@cli.command()
@output_options("text", "json")
@requirement_options
@click.argument("prompt", required=False)
@click.option("--max-tokens", type=WholeNumber(1), default=256, show_default=True)
@click.option("--system", default=None, help="System message.")
@click.option("--key", "budget_key", default=None, callback=_budget_key, help="Budget key (a user or team).")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Print the answer as it arrives.")
def ask(config: str | None, fmt: str, prompt: str | None, max_tokens: int, system: str | None,
        budget_key: str | None, stream: bool, **req: Any) -> None:
    """Route PROMPT and print the answer; then, on standard error, the model, tokens, cost,
    why that model (and every failed attempt) and the budget left.

    PROMPT '-' (or none, with a pipe) reads the prompt from standard input.
    """
    from .types import AIRequest

    text = _read_prompt(prompt)
    as_json = fmt == "json"

    async def go() -> tuple[Any, list[Any], list[str]]:
        async with _manager(config) as mm:
            scopes = [lim.scope for lim in mm.config.budget.limits]
            request = AIRequest.from_prompt(text, system=system, max_tokens=max_tokens,
                                            budget_key=budget_key)
            requirements = _requirements(mm, **req)
            if stream and not as_json:
                printed = False
                try:
                    async with mm.stream(request, requirements) as s:
                        async for chunk in s:
                            click.echo(chunk.text, nl=False)
                            printed = printed or bool(chunk.text)
                finally:
                    if printed:  # the error line (if any) starts a line of its own
                        click.echo()
                resp = s.response
            else:
                resp = await mm.complete(request, requirements)
                if not as_json:
                    click.echo(resp.text)
            card = mm.models[resp.model]
            left = await mm.tokens.check_budget(card, budget_key)
        return resp, left, scopes

    resp, left, scopes = _run(go)
    u = resp.usage
    if as_json:
        _echo_json({"text": resp.text, "model": resp.model, "cost_usd": money(resp.cost),
                    "usage": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                              "source": u.source},
                    "finish_reason": resp.finish_reason,
                    "reason": resp.decision.reason(),
                    "attempts": [_attempt(a) for a in resp.attempts],
                    "budget": [{"scope": b.scope, "bucket": b.bucket,
                                "remaining_usd": money(b.remaining)} for b in left]})
        return
    if _quiet():
        return
    cost = "unknown" if resp.cost is None else f"${resp.cost:f}"
    click.echo(f"-- {resp.model} | {u.input_tokens} in + {u.output_tokens} out tokens "
               f"({u.source}) | {cost} | {resp.decision.reason()}", err=True)
    for b in left:
        click.echo(f"-- budget {b.scope} ({b.bucket}): ${b.remaining:f} left of "
                   f"${b.limit:f}", err=True)
    if scopes and not left:  # limits configured, none of them on this request: say so
        keyed = budget_key is None and any(s.startswith("key:") for s in scopes)
        click.echo("-- budget: no configured limit applies to this request"
                   + (" (key: limits need --key KEY)" if keyed else ""), err=True)


@cli.command()
@output_options("table", "json", "csv")
@click.option("--by", type=click.Choice(["model", "provider", "scope", "day"]),
              default="model", show_default=True)
@click.option("--days", type=WholeNumber(1, MAX_DAYS), default=30, show_default=True,
              help=f"Look back this many days (1 to {MAX_DAYS}).")
def usage(config: str | None, by: str, days: int, fmt: str) -> None:
    """Usage from the ledger: tokens, cost, error and fallback rates, cost per request.

    The built-in 'memory' budget backend keeps its ledger in the process that made the
    requests and forgets it at exit: configure a durable one (sqlite) to report on it here.
    """
    from .budget import LedgerBackend, LedgerSummaries
    from .ledger import render, summarize

    async def go() -> tuple[list[dict[str, Any]], str]:
        mm = _manager(config)
        backend = mm.budget_backend
        try:
            if not isinstance(backend, LedgerBackend):
                raise CLIError(f"the {mm.config.budget.backend!r} budget backend keeps no "
                               "ledger")
            since = datetime.now(UTC) - timedelta(days=days)
            if isinstance(backend, LedgerSummaries):  # aggregated in the backend's store
                summary = await backend.summarize(by, since=since)
            else:
                summary = summarize(await backend.rows(since=since), by)
        finally:
            await mm.aclose()
        return summary, mm.config.budget.backend

    summary, backend_name = _run(go)
    if backend_name == "memory" and not _quiet():
        from .defaults import data_dir, find_config

        if find_config(config) is None:  # the embedded default: no file to add [budget] to
            keep = ("install squirrel-models-sqlite-budget: the embedded default (no "
                    f"squirrel.toml) then keeps them in {data_dir() / 'budget.sqlite3'}")
        else:
            # "install" when it is installed sent people to pip for nothing
            installed = "sqlite" in _plugin_manager().budget_backends()
            keep = (("set" if installed else "install squirrel-models-sqlite-budget and set")
                    + " in [budget]: backend = \"sqlite\" and options = { path = "
                    "\"budget.sqlite3\" } (next to the configuration file)")
        click.echo("note: the 'memory' budget backend keeps its ledger only in the process "
                   "that made the requests and forgets it at exit (each squirrel command "
                   f"starts empty); to keep usage across runs, {keep}", err=True)
    click.echo(render(summary, fmt))


@cli.group()
def ledger() -> None:
    """The usage ledger's upkeep ('squirrel usage' reads it)."""


@ledger.command()
@output_options("text", "json")
@click.option("--before", "before", required=True, type=Day(),
              help="Delete the rows recorded before this day (YYYY-MM-DD, midnight UTC).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def prune(config: str | None, fmt: str, before: datetime, yes: bool) -> None:
    """Delete old ledger rows; budgets (committed spend) are not changed."""
    from .budget import LedgerPruning

    cutoff = before.replace(tzinfo=UTC)
    day = cutoff.strftime("%Y-%m-%d")
    if fmt == "json" and not yes:
        raise click.UsageError("--format json needs --yes (a question would not be JSON)")

    async def go() -> int:
        mm = _manager(config)
        try:
            backend = mm.budget_backend
            if not isinstance(backend, LedgerPruning):
                raise CLIError(
                    f"the {mm.config.budget.backend!r} budget backend cannot prune its ledger")
            if not yes:
                click.confirm(f"Delete every ledger row recorded before {day} (UTC) from the "
                              f"{mm.config.budget.backend!r} budget backend? Budgets are kept.",
                              abort=True)
            return await backend.prune(cutoff)
        finally:
            await mm.aclose()

    pruned = _run(go)
    if fmt == "json":
        _echo_json({"pruned_rows": pruned, "before": day})
    else:
        click.echo(f"pruned {pruned} ledger row(s) recorded before {day} (UTC)")


BUDGET_COLUMNS = ("scope", "period", "bucket", "limit", "committed", "reserved", "remaining",
                  "utilization")


@cli.command()
@output_options("table", "json", "csv")
@click.option("--key", "budget_key", default=None, callback=_budget_key,
              help="Show this budget key's scopes too.")
def budget(config: str | None, fmt: str, budget_key: str | None) -> None:
    """Each budget limit: spent, reserved and left in the current period."""
    from .budget import limit_charges

    async def go() -> tuple[list[Any], bool]:
        mm = _manager(config)
        try:
            limits = mm.config.budget.limits
            charges = limit_charges(limits, budget_key=budget_key, now=datetime.now(UTC))
            # key:* is shown for one key only; a request without a key escapes it: say so
            # rather than seem unlimited
            unkeyed = budget_key is None and any(lim.scope == "key:*" for lim in limits)
            return list(await mm.budget_backend.usage(charges)), unkeyed
        finally:
            await mm.aclose()

    states, unkeyed = _run(go)
    rows = [{"scope": s.scope, "period": s.period, "bucket": s.bucket,
             "limit": money(s.limit), "committed": money(s.committed),
             "reserved": money(s.reserved), "remaining": money(s.remaining),
             "utilization": round(s.utilization, 6)} for s in states]
    if fmt == "json":
        _echo_json(rows)
        return
    if fmt == "csv":
        _echo_csv(rows, BUDGET_COLUMNS)
        return
    if unkeyed and not _quiet():
        click.echo("note: key:* limits each budget key separately and applies only to "
                   "requests with a key (squirrel ask --key KEY, a gateway key): see one key's "
                   "with --key KEY; a request without a key is capped only by global, "
                   "provider: and model: limits", err=True)
    if not states:
        click.echo("no limit applies to a request without a budget key" if unkeyed
                   else "no budget limits configured")
    for s in states:
        click.echo(f"{s.scope:<30} {s.period:<6} {s.bucket:<11} spent ${s.committed:f} "
                   f"reserved ${s.reserved:f} left ${s.remaining:f} of ${s.limit:f} "
                   f"({s.utilization:.1%})")


#: ``scaffold.KINDS``, named here so the CLI does not import the scaffold to start (a test
#: checks they agree).
_PLUGIN_KINDS = ("provider", "budget", "scoring", "fallback", "ratelimit", "tokens")


@cli.group()
def plugin() -> None:
    """Write plugins ('squirrel plugins' lists the installed ones)."""


@plugin.command("new")
@click.argument("name")
@click.option("--kind", default="provider", show_default=True, metavar="|".join(_PLUGIN_KINDS),
              help="What the plugin offers: a provider, a budget backend, a scoring rule, a fallback strategy, "
                   "a rate-limit store or a token counter.")
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False),
              help="The folder to write squirrel-models-NAME into.")
def plugin_new(name: str, kind: str, parent: str) -> None:
    """Write squirrel-models-NAME: a plugin of KIND that installs and passes its tests (the
    core's conformance suite of its kind among them)."""
    from .scaffold import PluginKindError, PluginNameError, PluginTarget, new_plugin

    try:
        folder = new_plugin(name, parent, kind)
    except PluginKindError as exc:
        raise click.BadParameter(str(exc), param_hint="--kind") from None
    except PluginNameError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    except PluginTarget as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    click.echo(f"wrote {folder}\nnext: pip install -e '{folder}[test]' && pytest {folder}")


def main() -> None:
    import atexit

    restore = _redact_output()  # for the whole process: a traceback is printed after cli()
    if restore is not None:
        atexit.register(restore)
    cli(prog_name="squirrel")
