"""What every ``squirrel`` command shares (see :mod:`squirrel_models.cli` for the commands):
exit codes and the one-line error report, log lines on standard error, the group that adds
plugin commands and reports errors, the common options (``--config``, ``--format``/``--json``,
``-v``, ``-q``), option types, and output helpers (JSON, CSV, money, redaction)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from decimal import Decimal
from functools import wraps
from typing import Any, TypeVar

import click

from .fieldchecks import number_problem, read_decimal, read_float, read_int

T = TypeVar("T")

#: Exit codes (docs/cli.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_MODEL = 0, 1, 2, 3
#: Ctrl-C (SIGINT), as shells report a command it stopped.
EXIT_INTERRUPTED = 130
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
    ``-v``/``-q`` chose (read when the record is emitted: options are parsed later), from
    the command's own ``meta``: a record logged in a worker thread (a plugin loading a model)
    has no click context there, and obeyed neither ``-q`` nor ``-v``."""

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__(logging.DEBUG)
        self.meta = meta

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < _log_level(self.meta):
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


def _log_level(meta: dict[str, Any] | None = None) -> int:
    meta = _meta() if meta is None else meta
    if meta.get("squirrel.quiet"):  # the command's own error is reported, not logged
        return logging.CRITICAL
    verbose = meta.get("squirrel.verbose", 0)
    return logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING


def _quiet() -> bool:
    return bool(_meta().get("squirrel.quiet"))


# --- the group ---------------------------------------------------------------------------


def _option_values(cmd: click.Command, args: Sequence[str]) -> list[tuple[click.Option, str, str]]:
    """Each (option, name as written, value) in ``args`` for ``cmd``'s options that take a
    value, up to ``--``: read the way click reads them (``--opt V``, ``--opt=V``, ``-mV``)."""
    takes: dict[str, click.Option] = {}
    for param in cmd.params:
        if isinstance(param, click.Option):
            for name in param.opts:
                takes[name] = param
    found: list[tuple[click.Option, str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        p = takes.get(name)
        if p is None and not arg.startswith("--") and len(arg) > 2 and arg[:2] in takes:
            p, name, eq, value = takes[arg[:2]], arg[:2], "=", arg[2:]
        if p is not None and not (p.is_flag or p.count):
            if not eq:
                if i + 1 >= len(args):
                    break  # click says the value is missing
                i += 1
                value = args[i]
            found.append((p, name, value))
        i += 1
    return found


def _refuse_repeats(cmd: click.Command, args: Sequence[str]) -> None:
    """A single-valued option given twice with different values is a usage error: click keeps
    the last silently, so ``--config a.toml ... --config b.toml`` ignored a.toml unannounced."""
    seen: dict[str, tuple[str, str]] = {}
    for p, name, value in _option_values(cmd, args):
        if p.multiple or p.name is None:
            continue
        first = seen.setdefault(p.name, (name, value))
        if first[1] != value:
            # values quoted only where they are no caller's key and short enough for a line
            quoted = "key" not in p.name and max(len(first[1]), len(value)) <= 100
            values = f", as {first[1]!r} and {value!r}" if quoted else " with different values"
            raise click.UsageError(f"{name} is given twice{values}; give it once")


class _ForwardConfig(click.Group):
    """A group that hands the root's ``--config`` (``squirrel --config FILE COMMAND``) to its
    commands, and refuses a single-valued option given twice with different values."""

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and not isinstance(cmd, click.Group):
            config = ctx.find_root().meta.get("squirrel.config")
            if config is not None and any(p.name == "config" for p in cmd.params):
                rest = ["--config", config, *rest]  # a --config after the command must agree
            _refuse_repeats(cmd, rest)
        return name, cmd, rest


class _Group(_ForwardConfig):
    """The ``squirrel`` group: adds plugin commands when asked for one, and turns every
    error of a command into one line (or a JSON object) and its exit code."""

    group_class = _ForwardConfig

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
        handler = _LogHandler(ctx.find_root().meta)
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(min(old_level or logging.WARNING, _log_level()))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            # Ctrl-C: the shell's convention, 128 + SIGINT, where click said "Aborted!" with
            # the exit code of a failed request (and no JSON object for --json)
            click.echo(err=True)
            ctx.exit(_report(CLIError("stopped by Ctrl-C", EXIT_INTERRUPTED, kind="Interrupted"),
                             _wants_json(ctx.meta.get("squirrel.argv", ()))))
        except (click.ClickException, Exception) as exc:
            from .errors import SquirrelError

            err: BaseException = exc
            while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
                err = err.exceptions[0]  # a task group's single error (anyio)
            if isinstance(err, BrokenPipeError):
                # the reader left (`squirrel models | head -1`): nobody to tell, no bug
                _stdout_gone()
                ctx.exit(1)
            if not isinstance(err, click.ClickException | SquirrelError):
                if ctx.meta.get("squirrel.verbose", 0):
                    raise
                err = CLIError(f"internal error ({type(err).__name__}: {err}); please "
                               "report it (-v shows the traceback)")
            ctx.exit(_report(err, _wants_json(ctx.meta.get("squirrel.argv", ()))))
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)


def _stdout_gone() -> None:
    """Point standard output at the null device, so that flushing what is left in its buffer
    at exit does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(devnull)
    except (OSError, ValueError):  # no real standard output (an in-process runner)
        pass


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


def _set_root_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().meta["squirrel.config"] = value


#: ``squirrel --config FILE COMMAND``: the same as ``squirrel COMMAND --config FILE``.
root_config_option = click.option("--config", metavar="FILE", default=None, expose_value=False,
                                  callback=_set_root_config,
                                  help="TOML configuration file for the command (the same as "
                                       "giving --config after it).")


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
    """A finite amount of US dollars >= 0, as a plain decimal number (``0.05``; a leading
    ``$`` is accepted): :func:`~squirrel_models.fieldchecks.read_decimal`'s grammar, so
    ``1_000``, full-width digits, ``1e3``, `` 5`` and ``NaN`` are refused, saying why."""

    name = "DOLLARS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            return read_decimal(str(value).removeprefix("$"))
        except ValueError as e:
            self.fail(f"{value!r} is not an amount of dollars (a decimal number such as 0.05): "
                      f"it {e}", param, ctx)


class PositiveFloat(click.ParamType):  # type: ignore[type-arg]
    """A finite number > 0 as a plain decimal number (click's FLOAT accepts ``inf``, ``nan``,
    ``1_0`` and Unicode digits)."""

    name = "NUMBER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = read_float(str(value))
            except ValueError as e:
                self.fail(f"{value!r} is not a number: it {e}", param, ctx)
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r} must be a finite number > 0", param, ctx)
        return number


class WholeNumber(click.ParamType):  # type: ignore[type-arg]
    """A whole number from ``low`` to ``high`` written in ASCII digits (click's INT and
    IntRange take ``1_000``, full-width digits, `` 5`` and a ``+``)."""

    name = "INTEGER"

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = read_int(str(value))
            except ValueError as e:
                self.fail(f"{value!r} is not a whole number: it {e}", param, ctx)
        if number < self.low or (self.high is not None and number > self.high):
            upto = f" to {self.high}" if self.high is not None else " or more"
            self.fail(f"{value!r} is not in the range {self.low}{upto}", param, ctx)
        return number


class Day(click.ParamType):  # type: ignore[type-arg]
    """A day as ``YYYY-MM-DD`` in ASCII digits (click's DateTime, through ``strptime``, also
    read full-width and other Unicode digits)."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value)
        parts = text.split("-")
        if len(parts) != 3 or [len(p) for p in parts] != [4, 2, 2] or any(
                number_problem(p, whole=True) for p in parts):
            self.fail(f"{value!r} is not a day written YYYY-MM-DD in ASCII digits", param, ctx)
        try:
            return datetime.strptime(text, "%Y-%m-%d")
        except ValueError as e:
            self.fail(f"{value!r} is not a day: {e}", param, ctx)


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


def money(amount: Decimal | None) -> str | None:
    """A money field of JSON and CSV output: decimal dollars as a string, no ``$``, no
    exponent (``"0.00001995"``); None for unknown."""
    return None if amount is None else format(amount, "f")


def _price(card: Any) -> str:
    if card.price is None:
        return "unknown"
    tiers = " (+tiers)" if card.price.tiers else ""  # dearer above some prompt size
    return f"${card.price.input:f} / ${card.price.output:f}{tiers}"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _echo_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: ";".join(v) if isinstance(v, list) else v for k, v in row.items()})
    click.echo(buf.getvalue(), nl=False)
