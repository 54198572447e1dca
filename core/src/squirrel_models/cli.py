"""The ``squirrel`` command line: plugins, models, select, ask, usage, budget, ledger prune.

Every command takes ``--config`` (else ``$SQUIRREL_CONFIG``, ``./squirrel.toml``, or the
embedded default) and most take ``--json``. Errors print one clear line and exit 2 (bad
configuration or input) or 1 (a request that failed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import click

T = TypeVar("T")


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import anyio

    from .errors import ConfigError, InvalidRequest, PluginError, SquirrelError

    try:
        return anyio.run(fn)
    except (ConfigError, InvalidRequest, PluginError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    except SquirrelError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


def _manager(config: str | None) -> Any:
    from .config import load_toml
    from .defaults import default_config, find_config
    from .manager import ModelManager
    from .plugins import PluginManager

    pm = PluginManager()
    path = find_config(config)
    cfg = load_toml(path) if path else default_config(pm)
    return ModelManager(cfg, plugins=pm)


def _price(card: Any) -> str:
    if card.price is None:
        return "unknown"
    return f"${card.price.input:f} / ${card.price.output:f}"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


config_option = click.option("--config", "config", envvar=None, default=None,
                             help="TOML configuration file (default: $SQUIRREL_CONFIG, "
                                  "./squirrel.toml, or the embedded default).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        _add_plugin_commands(self)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        _add_plugin_commands(self)
        return super().get_command(ctx, name)


_plugin_commands_added = False


def _add_plugin_commands(group: click.Group) -> None:
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    _plugin_commands_added = True
    from .plugins import PluginManager

    PluginManager().add_commands(group)


@click.group(cls=_Group)
@click.version_option(package_name="squirrel-models")
def cli() -> None:
    """Route AI requests to the right model, reliably and within budget."""


@cli.command()
@json_option
def plugins(as_json: bool) -> None:
    """Installed plugins, what they provide, and any that failed to load."""
    from .plugins import PluginManager

    pm = PluginManager()
    infos = pm.plugins()
    provided = {
        "providers": sorted(pm.provider_types()),
        "budget_backends": sorted(pm.budget_backends()),
        "scoring_rules": sorted(pm.scoring_rules()),
        "fallback_strategies": sorted(pm.fallback_strategies()),
    }
    if as_json:
        _echo_json({"plugins": [i.__dict__ if hasattr(i, "__dict__") else
                                {"name": i.name, "source": i.source, "dist": i.dist,
                                 "version": i.version, "hooks": list(i.hooks)} for i in infos],
                    "provides": provided, "failures": pm.failures})
        return
    for i in infos:
        where = f"{i.dist} {i.version}" if i.dist else i.source
        click.echo(f"{i.name:<32} {where:<40} {', '.join(i.hooks)}")
    for k, v in provided.items():
        click.echo(f"{k}: {', '.join(v) or '-'}")
    for name, reason in pm.failures:
        click.echo(f"FAILED {name}: {reason}", err=True)


@cli.command()
@config_option
@json_option
def models(config: str | None, as_json: bool) -> None:
    """Registered models: capabilities, context window and price (unknown shown as unknown)."""

    async def go() -> None:
        async with _manager(config) as mm:
            cards = list(mm.models.values())
        if as_json:
            _echo_json([{
                "id": c.id, "provider": c.provider, "type": c.provider_type,
                "capabilities": sorted(c.capabilities), "features": sorted(c.features),
                "context_window": c.context_window, "max_output_tokens": c.max_output_tokens,
                "price_per_mtok": None if c.price is None else {
                    "input": str(c.price.input), "output": str(c.price.output),
                    "cached_input": None if c.price.cached_input is None
                    else str(c.price.cached_input)},
                "quality": c.quality, "tags": sorted(c.tags)} for c in cards])
            return
        click.echo(f"{'model':<44} {'context':>8}  {'price in/out per 1M':<24} capabilities")
        for c in cards:
            caps = ", ".join(sorted(c.capabilities | c.features))
            click.echo(f"{c.id:<44} {c.context_window:>8}  {_price(c):<24} {caps}")

    _run(go)


def _requirements(capability: tuple[str, ...], feature: tuple[str, ...],
                  max_cost_per_1k: str | None, max_latency_ms: float | None,
                  provider: tuple[str, ...], tag: tuple[str, ...],
                  max_cost: str | None) -> Any:
    from .types import ModelRequirements

    return ModelRequirements(
        min_capabilities=frozenset(capability or ("chat",)),
        required_features=frozenset(feature),
        max_cost_per_1k_tokens=Decimal(max_cost_per_1k) if max_cost_per_1k else None,
        max_latency_ms=max_latency_ms,
        providers=frozenset(provider) if provider else None,
        tags=frozenset(tag),
        max_request_cost=Decimal(max_cost) if max_cost else None,
    )


def requirement_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--capability", multiple=True, help="Required capability (repeatable)."),
        click.option("--feature", multiple=True, help="Required feature (repeatable)."),
        click.option("--max-cost-per-1k", default=None, help="USD per 1k tokens ceiling."),
        click.option("--max-latency-ms", type=float, default=None),
        click.option("--provider", multiple=True, help="Allowed provider (repeatable)."),
        click.option("--tag", multiple=True, help="Required tag (repeatable)."),
        click.option("--max-cost", default=None, help="Per-request worst-case ceiling, USD."),
    ]):
        fn = opt(fn)
    return fn


@cli.command()
@config_option
@json_option
@requirement_options
@click.option("--prompt", default=None, help="Size the ranking for this prompt.")
@click.option("--explain", is_flag=True, help="Show the ranking table and exclusions.")
def select(config: str | None, as_json: bool, prompt: str | None, explain: bool,
           **req: Any) -> None:
    """Which model a request would go to, and why."""
    from .types import AIRequest

    async def go() -> None:
        async with _manager(config) as mm:
            request = AIRequest.from_prompt(prompt) if prompt else None
            decision = mm.rank(_requirements(**req), request)
        if as_json:
            _echo_json(decision.to_dict())
            return
        if decision.chosen is None:
            click.echo("no model meets the requirements")
        else:
            click.echo(f"{decision.chosen.card.id}: {decision.reason()}")
        if explain or decision.chosen is None:
            click.echo(decision.explain())

    _run(go)


@cli.command()
@config_option
@json_option
@requirement_options
@click.argument("prompt")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--system", default=None, help="System message.")
@click.option("--key", "budget_key", default=None, help="Budget key (a user or team).")
@click.option("--stream/--no-stream", default=True, show_default=True)
def ask(config: str | None, as_json: bool, prompt: str, max_tokens: int, system: str | None,
        budget_key: str | None, stream: bool, **req: Any) -> None:
    """Route PROMPT and print the answer, the model, tokens, cost and budget left."""
    from .types import AIRequest

    async def go() -> None:
        async with _manager(config) as mm:
            request = AIRequest.from_prompt(prompt, system=system, max_tokens=max_tokens,
                                            budget_key=budget_key)
            requirements = _requirements(**req)
            if stream and not as_json:
                async with mm.stream(request, requirements) as s:
                    async for chunk in s:
                        click.echo(chunk.text, nl=False)
                click.echo()
                resp = s.response
            else:
                resp = await mm.complete(request, requirements)
            card = mm.models[resp.model]
            left = await mm.tokens.check_budget(card, budget_key)
        cost = "unknown" if resp.cost is None else f"${resp.cost:f}"
        if as_json:
            _echo_json({"text": resp.text, "model": resp.model, "cost_usd": cost,
                        "usage": resp.usage.__dict__ if hasattr(resp.usage, "__dict__") else
                        {"input": resp.usage.input_tokens, "output": resp.usage.output_tokens,
                         "source": resp.usage.source},
                        "attempts": len(resp.attempts),
                        "budget": [{"scope": u.scope, "bucket": u.bucket,
                                    "remaining_usd": str(u.remaining)} for u in left]})
            return
        u = resp.usage
        click.echo(f"-- {resp.model} | {u.input_tokens} in + {u.output_tokens} out tokens "
                   f"({u.source}) | {cost} | {resp.decision.reason()}", err=True)
        for b in left:
            click.echo(f"-- budget {b.scope} ({b.bucket}): ${b.remaining:f} left of "
                       f"${b.limit:f}", err=True)

    _run(go)


@cli.command()
@config_option
@click.option("--by", type=click.Choice(["model", "provider", "scope", "day"]),
              default="model", show_default=True)
@click.option("--days", type=int, default=30, show_default=True, help="Look back this far.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]),
              default="table", show_default=True)
def usage(config: str | None, by: str, days: int, fmt: str) -> None:
    """Usage from the ledger: tokens, cost, error and fallback rates, cost per request."""
    from .budget import LedgerBackend, LedgerSummaries
    from .ledger import render, summarize

    async def go() -> None:
        mm = _manager(config)
        backend = mm.budget_backend
        try:
            if not isinstance(backend, LedgerBackend):
                raise click.ClickException("the configured budget backend keeps no ledger")
            since = datetime.now(UTC) - timedelta(days=days)
            if isinstance(backend, LedgerSummaries):  # aggregated in the backend's store
                summary = await backend.summarize(by, since=since)
            else:
                summary = summarize(await backend.rows(since=since), by)
        finally:
            await mm.aclose()
        click.echo(render(summary, fmt))

    _run(go)


@cli.group()
def ledger() -> None:
    """The usage ledger's upkeep (``squirrel usage`` reads it)."""


@ledger.command()
@config_option
@click.option("--before", "before", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Delete the rows recorded before this day (YYYY-MM-DD, midnight UTC).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def prune(config: str | None, before: datetime, yes: bool) -> None:
    """Delete old ledger rows; budgets (committed spend) are not changed."""
    from .budget import LedgerPruning

    cutoff = before.replace(tzinfo=UTC)
    day = cutoff.strftime("%Y-%m-%d")

    async def go() -> int:
        mm = _manager(config)
        try:
            backend = mm.budget_backend
            if not isinstance(backend, LedgerPruning):
                raise click.ClickException(
                    f"the {mm.config.budget.backend!r} budget backend cannot prune its ledger")
            if not yes:
                click.confirm(f"Delete every ledger row recorded before {day} (UTC) from the "
                              f"{mm.config.budget.backend!r} budget backend? Budgets are kept.",
                              abort=True)
            return await backend.prune(cutoff)
        finally:
            await mm.aclose()

    click.echo(f"pruned {_run(go)} ledger row(s) recorded before {day} (UTC)")


@cli.command()
@config_option
@json_option
@click.option("--key", "budget_key", default=None, help="Show this budget key's scopes too.")
def budget(config: str | None, as_json: bool, budget_key: str | None) -> None:
    """Each budget limit: spent, reserved and left in the current period."""
    from .budget import limit_charges

    async def go() -> None:
        mm = _manager(config)
        try:
            charges = limit_charges(mm.config.budget.limits, budget_key=budget_key,
                                    now=datetime.now(UTC))
            states = await mm.budget_backend.usage(charges)
        finally:
            await mm.aclose()
        if as_json:
            _echo_json([{"scope": s.scope, "period": s.period, "bucket": s.bucket,
                         "limit": str(s.limit), "committed": str(s.committed),
                         "reserved": str(s.reserved), "remaining": str(s.remaining)}
                        for s in states])
            return
        if not states:
            click.echo("no budget limits configured")
        for s in states:
            click.echo(f"{s.scope:<30} {s.period:<6} {s.bucket:<11} spent ${s.committed:f} "
                       f"reserved ${s.reserved:f} left ${s.remaining:f} of ${s.limit:f} "
                       f"({s.utilization:.1%})")

    _run(go)


def main() -> None:
    cli(prog_name="squirrel")
