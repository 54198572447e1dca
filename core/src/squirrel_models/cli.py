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
====  ==================================================================================
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import wraps
from typing import Any, TypeVar

import click

T = TypeVar("T")

#: Exit codes (docs/cli.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_MODEL = 0, 1, 2, 3
#: ``usage --days`` upper bound: about 270 years, well inside what dates can express.
MAX_DAYS = 100_000


# --- errors and exit codes ---------------------------------------------------------------


class CLIError(click.ClickException):
    """A command that cannot do what was asked; ``exit_code`` per the table above."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, kind: str = "Error") -> None:
        super().__init__(message)
        self.kind = kind
        setattr(self, "exit_code", exit_code)  # noqa: B010 (a class attribute in click)


def _exit_code(exc: BaseException) -> int:
    from .errors import (
        CapabilityNotSupported,
        ConfigError,
        InvalidRequest,
        ModelNotFound,
        PluginError,
    )

    if isinstance(exc, click.ClickException):
        return exc.exit_code
    if isinstance(exc, CapabilityNotSupported):
        return EXIT_NO_MODEL
    if isinstance(exc, ConfigError | PluginError | InvalidRequest | ModelNotFound):
        return EXIT_USAGE
    return EXIT_FAILED


def _wants_json(argv: Sequence[str]) -> bool:
    args = list(argv)
    if "--json" in args or "--format=json" in args:
        return True
    return any(a == "--format" and b == "json" for a, b in itertools.pairwise(args))


def _report(exc: BaseException, as_json: bool) -> int:
    """Print ``exc`` as one line (or one JSON object) and return its exit code."""
    from .secrets import redact

    code = _exit_code(exc)
    if isinstance(exc, CLIError):
        kind, message = exc.kind, exc.format_message()
    elif isinstance(exc, click.UsageError):
        kind, message = "UsageError", exc.format_message()
    elif isinstance(exc, click.ClickException):
        kind, message = "Error", exc.format_message()
    else:
        kind, message = type(exc).__name__, str(exc)
    message = redact(message)
    if as_json:
        err: dict[str, Any] = {"type": kind, "message": message, "exit_code": code}
        for attr in ("field", "plugin", "model_id", "status_code"):
            value = getattr(exc, attr, None)
            if value is not None:
                err[attr] = value
        excluded = getattr(exc, "excluded", None)
        if excluded:
            err["excluded"] = dict(excluded)
        click.echo(json.dumps({"error": err}, indent=2, default=str))
    else:
        # A multi-line message (FallbackExhausted lists its attempts) keeps its lines.
        prefix = "Error: " if kind in ("Error", "UsageError") else f"Error: {kind}: "
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
        click.echo(prefix + message, err=True)
    return code


class _LogHandler(logging.Handler):
    """Log records as ``warning: ...`` lines on the current standard error, at the level
    ``-v``/``-q`` chose (read when the record is emitted: options are parsed later)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < _log_level():
            return
        try:
            from .secrets import redact

            msg = redact(record.getMessage())
            click.echo(f"{record.levelname.lower()}: {msg}", err=True)
        except Exception:  # a log line must never break a command
            self.handleError(record)


def _meta() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().meta if ctx is not None else {}


def _log_level() -> int:
    meta = _meta()
    if meta.get("squirrel.quiet"):  # the command's own error is reported, not logged
        return logging.CRITICAL
    verbose = meta.get("squirrel.verbose", 0)
    return logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING


def _quiet() -> bool:
    return bool(_meta().get("squirrel.quiet"))


# --- the group ---------------------------------------------------------------------------


class _Group(click.Group):
    """The ``squirrel`` group: adds plugin commands when asked for one, and turns every
    error of a command into one line (or a JSON object) and its exit code."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["squirrel.argv"] = argv
        return ctx

    def list_commands(self, ctx: click.Context) -> list[str]:
        _add_plugin_commands(self, ctx, listing=True)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None:  # plugins are loaded only for a command the core does not have
            _add_plugin_commands(self, ctx, listing=False)
            cmd = super().get_command(ctx, name)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        # The handler filters by -v/-q as each record comes (a command's own -v is parsed
        # after this point and lowers the root logger's level then).
        root = logging.getLogger()
        handler = _LogHandler(logging.DEBUG)
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(min(old_level or logging.WARNING, _log_level()))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except (click.ClickException, Exception) as exc:
            from .errors import SquirrelError

            err: BaseException = exc
            while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
                err = err.exceptions[0]  # a task group's single error (anyio)
            if not isinstance(err, click.ClickException | SquirrelError):
                if ctx.meta.get("squirrel.verbose", 0):
                    raise
                err = CLIError(f"internal error ({type(err).__name__}: {err}); please "
                               "report it (-v shows the traceback)")
            ctx.exit(_report(err, _wants_json(ctx.meta.get("squirrel.argv", ()))))
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)


def _plugin_manager() -> Any:
    """The one plugin manager of this command (so each plugin warning is printed once)."""
    meta = _meta()
    pm = meta.get("squirrel.pm")
    if pm is None:
        from .plugins import PluginManager

        pm = meta["squirrel.pm"] = PluginManager()
    return pm


_plugin_commands_added = False


def _add_plugin_commands(group: click.Group, ctx: click.Context, *, listing: bool) -> None:
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    from .errors import PluginError

    try:
        _plugin_manager().add_commands(group)
    except PluginError as exc:
        if not listing:
            raise
        # --help still works with a broken plugin (strict mode): one line, no traceback.
        click.echo(f"warning: plugin commands not listed: PluginError: {exc}", err=True)
        return
    _plugin_commands_added = True


def _set_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        meta = ctx.find_root().meta
        meta["squirrel.verbose"] = meta.get("squirrel.verbose", 0) + value
        root = logging.getLogger()
        root.setLevel(min(root.level or logging.WARNING, _log_level()))


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["squirrel.quiet"] = True


verbose_option = click.option("-v", "--verbose", count=True, expose_value=False,
                              callback=_set_verbose,
                              help="Log more: -v info, -vv debug (on standard error).")
quiet_option = click.option("-q", "--quiet", is_flag=True, expose_value=False,
                            callback=_set_quiet,
                            help="Print only the result and errors: no warnings, no report "
                                 "lines.")
config_option = click.option("--config", "config", default=None, metavar="FILE",
                             help="TOML configuration file (default: $SQUIRREL_CONFIG, "
                                  "./squirrel.toml, else the embedded default).")


def output_options(*formats: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--format`` (the first of ``formats`` by default) and ``--json`` as its alias; the
    command receives ``fmt``. Also ``--config``, ``-v`` and ``-q``: every command has them."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(*args: Any, fmt: str | None, as_json: bool, **kwargs: Any) -> Any:
            if as_json and fmt not in (None, "json"):
                raise click.UsageError(f"--json and --format {fmt} disagree; give one")
            return fn(*args, fmt="json" if as_json else (fmt or formats[0]), **kwargs)

        for opt in reversed([
            config_option,
            click.option("--format", "fmt", type=click.Choice(formats), default=None,
                         help=f"Output format (default: {formats[0]})."),
            click.option("--json", "as_json", is_flag=True, help="Same as --format json."),
            verbose_option, quiet_option,
        ]):
            wrapper = opt(wrapper)
        return wrapper

    return deco


# --- option types --------------------------------------------------------------------------


class Dollars(click.ParamType):  # type: ignore[type-arg]
    """A finite amount of US dollars >= 0, as a decimal number (``0.05``; a leading ``$`` is
    accepted)."""

    name = "DOLLARS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Decimal:
        if isinstance(value, Decimal):
            return value
        text = str(value).strip().removeprefix("$")
        try:
            amount = Decimal(text)
        except (InvalidOperation, ValueError):
            self.fail(f"{value!r} is not an amount of dollars (a decimal number such as 0.05)",
                      param, ctx)
        if not amount.is_finite() or amount < 0:
            self.fail(f"{value!r} is not an amount of dollars: it must be finite and >= 0",
                      param, ctx)
        return amount


class PositiveFloat(click.ParamType):  # type: ignore[type-arg]
    """A finite number > 0 (click's FLOAT accepts ``inf`` and ``nan``)."""

    name = "NUMBER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r} must be a finite number > 0", param, ctx)
        return number


# --- helpers -----------------------------------------------------------------------------


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import anyio

    return anyio.run(fn)


def _redact_output() -> Callable[[], None] | None:
    """Send ``sys.stdout`` and ``sys.stderr`` through the one redaction point (see
    :mod:`squirrel_models.secrets`): answers, tables, errors and tracebacks alike. Returns
    the function that writes what is held back and restores the streams (None: already)."""
    from .secrets import RedactingWriter

    if isinstance(sys.stdout, RedactingWriter) or isinstance(sys.stderr, RedactingWriter):
        return None
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingWriter(out), RedactingWriter(err)

    def restore() -> None:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, RedactingWriter):
                stream.release()
        sys.stdout, sys.stderr = out, err

    return restore


def _manager(config: str | None) -> Any:
    from .config import load_toml
    from .defaults import default_config, find_config
    from .manager import ModelManager

    pm = _plugin_manager()
    path = find_config(config)
    cfg = load_toml(path) if path else default_config(pm)
    return ModelManager(cfg, plugins=pm)


def money(amount: Decimal | None) -> str | None:
    """A money field of JSON and CSV output: decimal dollars as a string, no ``$``, no
    exponent (``"0.00001995"``); None for unknown."""
    return None if amount is None else format(amount, "f")


def _price(card: Any) -> str:
    if card.price is None:
        return "unknown"
    return f"${card.price.input:f} / ${card.price.output:f}"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _echo_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: ";".join(v) if isinstance(v, list) else v for k, v in row.items()})
    click.echo(buf.getvalue(), nl=False)


# --- commands ------------------------------------------------------------------------------


@click.group(cls=_Group)
@click.version_option(package_name="squirrel-models")
@verbose_option
@quiet_option
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Route AI requests to the right model, reliably and within budget.

    Exit codes: 0 success, 1 the request or operation failed, 2 bad configuration or input,
    3 no model meets the requirements. See docs/cli.md.
    """
    restore = _redact_output()
    if restore is not None:
        ctx.call_on_close(restore)


@cli.command()
@output_options("table", "json")
def plugins(config: str | None, fmt: str) -> None:
    """Installed plugins: what each provides, and any disabled or failed to load."""
    from .plugins import PluginManager

    strict = _plugin_manager().strict
    # Listing is a diagnosis: load everything, strict or not, and show failures as rows
    # rather than as log lines (so each is printed once).
    pm = PluginManager(strict=False)
    plog = logging.getLogger("squirrel_models.plugins")
    saved = plog.disabled
    plog.disabled = True
    try:
        infos = pm.plugins()
        contrib = pm.contributions()
    finally:
        plog.disabled = saved
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
        if fmt == "json":
            _echo_json([{
                "id": c.id, "provider": c.provider, "type": c.provider_type,
                "capabilities": sorted(c.capabilities), "features": sorted(c.features),
                "context_window": c.context_window, "max_output_tokens": c.max_output_tokens,
                "price_per_mtok": None if c.price is None else {
                    "input": money(c.price.input), "output": money(c.price.output),
                    "cached_input": money(c.price.cached_input)},
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
        raise click.BadParameter(f"no model {name!r} is registered; {hint}",
                                 param_hint="'-m' / '--model'")
    return frozenset(ids)


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
        changes["providers"] = frozenset(provider)
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
@click.option("--explain", is_flag=True, help="Show the ranking table and exclusions.")
def select(config: str | None, fmt: str, prompt: str | None, explain: bool,
           **req: Any) -> None:
    """Which model a request would go to, and why.

    Uses the configuration's [requirements]; each flag given replaces that one field.
    Exits 3 when no model meets the requirements.
    """
    from .types import AIRequest

    async def go() -> Any:
        async with _manager(config) as mm:
            request = AIRequest.from_prompt(prompt) if prompt else None
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
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--system", default=None, help="System message.")
@click.option("--key", "budget_key", default=None, help="Budget key (a user or team).")
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

    async def go() -> tuple[Any, list[Any]]:
        async with _manager(config) as mm:
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
        return resp, left

    resp, left = _run(go)
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


@cli.command()
@output_options("table", "json", "csv")
@click.option("--by", type=click.Choice(["model", "provider", "scope", "day"]),
              default="model", show_default=True)
@click.option("--days", type=click.IntRange(1, MAX_DAYS), default=30, show_default=True,
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
        click.echo("note: the 'memory' budget backend keeps its ledger only in the process "
                   "that made the requests and forgets it at exit (each squirrel command "
                   "starts empty); set [budget] backend = \"sqlite\" "
                   "(squirrel-models-sqlite-budget) to keep usage across runs", err=True)
    click.echo(render(summary, fmt))


@cli.group()
def ledger() -> None:
    """The usage ledger's upkeep ('squirrel usage' reads it)."""


@ledger.command()
@output_options("text", "json")
@click.option("--before", "before", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
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
@click.option("--key", "budget_key", default=None, help="Show this budget key's scopes too.")
def budget(config: str | None, fmt: str, budget_key: str | None) -> None:
    """Each budget limit: spent, reserved and left in the current period."""
    from .budget import limit_charges

    async def go() -> list[Any]:
        mm = _manager(config)
        try:
            charges = limit_charges(mm.config.budget.limits, budget_key=budget_key,
                                    now=datetime.now(UTC))
            return list(await mm.budget_backend.usage(charges))
        finally:
            await mm.aclose()

    states = _run(go)
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
    if not states:
        click.echo("no budget limits configured")
    for s in states:
        click.echo(f"{s.scope:<30} {s.period:<6} {s.bucket:<11} spent ${s.committed:f} "
                   f"reserved ${s.reserved:f} left ${s.remaining:f} of ${s.limit:f} "
                   f"({s.utilization:.1%})")


@cli.group()
def plugin() -> None:
    """Write provider plugins ('squirrel plugins' lists the installed ones)."""


@plugin.command("new")
@click.argument("name")
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False),
              help="The folder to write squirrel-models-NAME into.")
def plugin_new(name: str, parent: str) -> None:
    """Write squirrel-models-NAME: a provider plugin that installs and passes its tests."""
    from .scaffold import PluginNameError, PluginTarget, new_plugin

    try:
        folder = new_plugin(name, parent)
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
