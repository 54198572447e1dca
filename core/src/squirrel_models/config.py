"""Configuration: attrs classes, one cattrs converter, errors that name the field.

Load from a mapping (:func:`load_config`) or a TOML file (:func:`load_toml`). Unknown keys,
wrong types and impossible values raise :class:`~squirrel_models.errors.ConfigError` whose
``field`` is the dotted path of the first offending field (``providers[1].options.base_url``)
and whose message lists every problem found.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs

from .budget import CLEANUP_TIMEOUT, BudgetLimit
from .confighints import unknown_key_hint
from .errors import ConfigError, InvalidRequest, shown
from .fallback import BreakerConfig, check_graph
from .fieldchecks import number_problem
from .providers import ModelOverride
from .ratelimit import RateLimitConfig
from .telemetry import TelemetryConfig
from .types import ModelRequirements

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "PATH_OPTION",
    "BudgetConfig",
    "Config",
    "FallbackConfig",
    "ProviderConfig",
    "ScoringConfig",
    "UnansweredCharge",
    "load_config",
    "load_toml",
    "path_option",
    "resolve_paths",
    "structure_options",
    "the_converter",
]

T = TypeVar("T")

#: The largest number any configuration field takes (a sanity bound: bigger is a typo, and
#: overflows the stores, which keep milliseconds and nano-dollars in 64-bit integers).
MAX_NUMBER = 10**15

DEFAULT_STRATEGIES = ("graph", "larger_context", "cheaper", "next_candidate", "retry")


def _max_tokens(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10_000_000:
        raise ConfigError(f"must be a whole number of tokens in 1..10,000,000, got {value!r}",
                          field=attribute.name)


#: How long a budget reservation lives when ``budget.reservation_ttl`` is unset (at least).
DEFAULT_RESERVATION_TTL = 600.0


def lease_needed(timeout: float) -> float:
    """How long a budget reservation must live for a request with ``timeout``: the request
    holds it until its deadline, and its settlement may run for the cleanup bound after."""
    return timeout + CLEANUP_TIMEOUT


def lease_ttl(configured: float | None, timeout: float) -> float:
    """The lease of a request with ``timeout``: ``budget.reservation_ttl`` when set, else the
    default stretched to what the timeout needs."""
    if configured is not None:
        return configured
    return max(DEFAULT_RESERVATION_TTL, lease_needed(timeout))


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"must be a finite number > 0, got {value!r}", field=attribute.name)


@attrs.frozen
class ProviderConfig:
    """One ``[[providers]]`` entry: an instance ``name`` of provider ``type``."""

    name: str
    type: str
    options: Mapping[str, Any] = attrs.field(factory=dict)
    models: tuple[ModelOverride, ...] = ()
    discover: bool = True
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        if not self.name or "/" in self.name or not self.name.isprintable():
            # printable: the name begins every model id, which metrics, headers and the
            # CLI's lines carry (a line break split them)
            raise ConfigError(f"must be non-empty printable text with no '/', got {shown(self.name)}",
                              field="name")
        # Overrides are applied by name, the last one winning: a second entry would silently
        # replace the first's price, window or switch.
        if (i := _second_of([m.name for m in self.models])) is not None:
            raise ConfigError(f"duplicate model name {shown(self.models[i].name)}: one entry per model",
                              field=f"models[{i}].name")


def _second_of(names: Sequence[str]) -> int | None:
    """The index of the first name in ``names`` that an earlier one already has, else None."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            return i
        seen.add(name)
    return None


#: The values of ``[budget] charge_unanswered`` (see :mod:`squirrel_models.unanswered`).
UnansweredCharge = Literal["worst_case", "prompt", "nothing"]


@attrs.frozen
class BudgetConfig:
    """``[budget]``: the backend, its options, the limits and the unpriced-model policy.
    ``reservation_ttl`` unset: :data:`DEFAULT_RESERVATION_TTL`, or longer when a request's
    timeout needs it (:func:`lease_needed`); set, it must cover the configured timeouts."""

    backend: str = "memory"
    options: Mapping[str, Any] = attrs.field(factory=dict)
    limits: tuple[BudgetLimit, ...] = ()
    allow_unpriced: bool = False
    reservation_ttl: float | None = attrs.field(default=None, validator=_positive)
    #: What an attempt is charged when its request may have reached the provider but no
    #: answer came (cut by the deadline or the caller, a read timeout): see
    #: :mod:`squirrel_models.unanswered`.
    charge_unanswered: UnansweredCharge = "worst_case"


@attrs.frozen
class FallbackConfig:
    """``[fallback]``: strategies in order, the attempt bound, strategy options and the graph."""

    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    max_attempts: int = 3
    options: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    graph: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ConfigError(f"must be in 1..100, got {self.max_attempts}",
                              field="max_attempts")
        check_graph(self.graph, field="graph")
        if (i := _second_of(self.strategies)) is not None:
            # asked in order, the first with a next step deciding: a second entry is never asked
            raise ConfigError(f"duplicate strategy {shown(self.strategies[i])}: each is asked once, in "
                              "the order listed", field=f"strategies[{i}]")


@attrs.frozen
class ScoringConfig:
    """``[scoring]``: a named ``policy`` (``balanced``, ``cheapest``, ``fastest``, ``best``;
    see :data:`squirrel_models.scoring.POLICIES`) and ``weights`` that override single rules'
    weights."""

    weights: Mapping[str, float] = attrs.field(factory=dict)
    policy: Literal["balanced", "cheapest", "fastest", "best"] = "balanced"
    #: Candidates whose total score is within ``spread_margin`` of the best share the
    #: traffic (see :mod:`squirrel_models.spread`); ``spread = false`` ranks strictly.
    spread: bool = True
    spread_margin: float = 0.0
    spread_by: Literal["in_flight", "headroom"] = "in_flight"
    spread_seed: int | None = None

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.spread_margin) and 0 <= self.spread_margin <= 1):
            raise ConfigError(f"must be a number in 0..1 (a difference of total scores), got "
                              f"{self.spread_margin!r}", field="spread_margin")
        if not self.spread:  # they choose among equivalent candidates, which only spread draws
            for name, default in (("spread_margin", 0.0), ("spread_by", "in_flight")):
                if getattr(self, name) != default:
                    raise ConfigError(f"has no effect unless spread = true (spread = false ranks "
                                      f"strictly), got {getattr(self, name)!r}", field=name)
        for name, w in self.weights.items():
            if not (math.isfinite(w) and w >= 0):
                raise ConfigError(f"must be a finite number >= 0, got {w!r}",
                                  field=f"weights.{name}")


@attrs.frozen
class Config:
    """The whole configuration. ``timeout`` is each request's deadline in seconds.
    ``default_max_tokens`` is the output cap of a request that sets no ``max_tokens`` (capped
    by the model's limits; None: the model's ``max_output_tokens``, else 4,096): what is sent
    upstream and reserved from budgets."""

    providers: tuple[ProviderConfig, ...] = ()
    budget: BudgetConfig = attrs.field(factory=BudgetConfig)
    fallback: FallbackConfig = attrs.field(factory=FallbackConfig)
    circuit_breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    scoring: ScoringConfig = attrs.field(factory=ScoringConfig)
    requirements: ModelRequirements = attrs.field(factory=ModelRequirements)
    timeout: float = attrs.field(default=60.0, validator=_positive)
    attempt_timeout: float | None = attrs.field(default=None, validator=_positive)
    strict_plugins: bool = False
    #: The folder relative paths in plugin options are resolved against (``load_toml``: the
    #: file's folder; None: the current directory).
    base_dir: str | None = None
    default_max_tokens: int | None = attrs.field(default=None, validator=_max_tokens)
    telemetry: TelemetryConfig = attrs.field(factory=TelemetryConfig)
    #: ``[gateway]``: read by the gateway plugin (``squirrel serve``, squirrel-models-gateway),
    #: which checks it; kept here as a table so one file configures both.
    gateway: Mapping[str, Any] = attrs.field(factory=dict)
    rate_limits: RateLimitConfig = attrs.field(factory=RateLimitConfig)

    def __attrs_post_init__(self) -> None:
        # A lease that expires mid-request gives its room to others while the request may
        # still use it: every budget could then be overrun, and a concurrency or token limit
        # let more through than it says.
        longest = max(self.timeout, self.attempt_timeout or 0.0)
        needed = lease_needed(longest)
        which = "timeout" if longest == self.timeout else "attempt_timeout"
        for field, ttl, what in (
                ("budget.reservation_ttl", self.budget.reservation_ttl,
                 "a reservation that expired mid-request would let other requests spend its "
                 "headroom"),
                ("rate_limits.lease_ttl", self.rate_limits.lease_ttl,
                 "a concurrency slot or token lease that expired mid-request would let other "
                 "requests past the limit")):
            if ttl is not None and ttl < needed:
                raise ConfigError(f"must be at least {which} + {needed - longest:g} s of cleanup "
                                  f"({needed:g} s), got {ttl:g}: {what}", field=field)
        if (i := _second_of([p.name for p in self.providers])) is not None:
            raise ConfigError(f"duplicate provider name {self.providers[i].name!r}",
                              field=f"providers[{i}].name")


def _structure_decimal(value: Any, _: type) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, str):  # text: the strict grammar ("1_000", " 5", "1e3" refused)
        why = number_problem(value, signed=True)
        if why is not None:
            raise ValueError(f"{shown(value)} {why}")
    elif isinstance(value, float):
        value = repr(value)
    elif not isinstance(value, int | Decimal):
        raise ValueError(f"expected a number, got {value!r}")  # bounded by _bounded
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"expected a finite number, got {value!r}")
    if abs(d) > MAX_NUMBER:
        raise ValueError(f"out of range: at most {MAX_NUMBER:.0e} in size, got {value!r}")
    return d


def _strict_scalar(kind: type) -> Any:
    def hook(value: Any, _: type) -> Any:
        # cattrs would coerce "3" to 3 and 1.9 to 1: configuration must say what it means.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not kind:
            raise ValueError(f"expected {kind.__name__}, got {type(value).__name__} {shown(value)}")
        if kind is str and not typing.cast(str, value).isascii():
            try:
                typing.cast(str, value).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"is not valid Unicode (a lone surrogate), got {shown(value)}") from None
        if kind is float and not math.isfinite(typing.cast(float, value)):
            raise ValueError(f"expected a finite number, got {value!r}")
        if kind in (int, float) and abs(typing.cast(float, value)) > MAX_NUMBER:
            raise ValueError(f"out of range: at most {MAX_NUMBER:.0e} in size, got {shown(value)}")
        return value
    return hook


_MAPPINGS: tuple[Any, ...] = (Mapping, dict)


def _is_list_type(t: Any) -> bool:
    origin = typing.get_origin(t)
    if origin in (list, Sequence):
        return True
    return origin is tuple and len(typing.get_args(t)) == 2 and typing.get_args(t)[1] is Ellipsis


#: What TOML's two header forms mean, for a table written where a list of tables belongs
#: (``[providers]`` for ``[[providers]]``) and the reverse (``[[budget]]``).
_ONE_BRACKET = "; in TOML a list of tables takes [[...]] headers (two pairs of brackets), [...] makes one table"
_TWO_BRACKETS = "; in TOML a table takes a [...] header (one pair of brackets), [[...]] makes a list"


def _list_items(value: Any, what: str = "a list", item: Any = str) -> list[Any]:
    """``value`` as a list of ``item``; a string, a table or a scalar where a list belongs is
    an error (iterating would split a string into characters or a table into its keys)."""
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        tables = attrs.has(item)
        hint = (f" (write [{value!r}] for a list of one)" if isinstance(value, str) and item is str
                else _ONE_BRACKET if tables and isinstance(value, Mapping) else "")
        raise ValueError(f"expected {'a list of tables' if tables else what}, got "
                         f"{type(value).__name__} {shown(value)}{hint}")
    return list(value)


def _make_converter() -> cattrs.Converter:
    import cattrs
    import cattrs.gen
    from cattrs.errors import IterableValidationError

    c = cattrs.Converter(forbid_extra_keys=True)
    c.register_structure_hook(Decimal, _structure_decimal)
    for kind in (int, float, str, bool):
        c.register_structure_hook(kind, _strict_scalar(kind))
    c.register_unstructure_hook(Decimal, str)

    def literal(value: Any, kind: Any) -> Any:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}, got {value!r}")
        return value

    c.register_structure_hook_func(
        lambda t: typing.get_origin(t) is typing.Literal,  # type: ignore[comparison-overlap]
        literal)
    # Sets of names take a single string for a set of one (documented); ordered lists do not.
    c.register_structure_hook_func(
        lambda t: t == frozenset[str],
        lambda v, _: frozenset(c.structure([v] if isinstance(v, str) else _list_items(v), list[str])))

    def sequence(value: Any, kind: Any) -> Any:
        args = typing.get_args(kind)
        item = args[0] if args else Any
        items = _list_items(value, item=item)
        out, errors = [], []
        for i, v in enumerate(items):
            try:
                out.append(c.structure(v, item))
            except Exception as e:  # collected and reported with its index
                e.__notes__ = [*getattr(e, "__notes__", []), f"Structuring {kind} @ index {i}"]
                errors.append(e)
        if errors:
            raise IterableValidationError(f"While structuring {kind}", errors, kind)
        return out if typing.get_origin(kind) is list else tuple(out)

    c.register_structure_hook_func(_is_list_type, sequence)

    def mapping(value: Any, kind: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table, got {type(value).__name__} {shown(value)}")
        key_type, value_type = typing.get_args(kind) or (Any, Any)
        out, errors = {}, []
        for k, v in value.items():
            try:
                out[c.structure(k, key_type)] = c.structure(v, value_type)
            except Exception as e:  # collected and reported with its key
                e.__notes__ = [*getattr(e, "__notes__", []), f"Structuring {kind} @ key {k!r}"]
                errors.append(e)
        if errors:
            raise IterableValidationError(f"While structuring {kind}", errors, kind)
        return out

    c.register_structure_hook_func(
        lambda t: typing.get_origin(t) in _MAPPINGS or t in _MAPPINGS, mapping)

    def table(cls: type[Any]) -> Callable[[Any, Any], Any]:
        # cattrs' own hook reads any value as a table: a string or a number where a section
        # belongs failed with Python's "'str' object has no attribute 'keys'".
        fields = cattrs.gen.make_dict_structure_fn(cls, c)

        def structure_table(value: Any, kind: Any) -> Any:
            if not isinstance(value, Mapping):
                hint = _TWO_BRACKETS if isinstance(value, list) and value and isinstance(value[0], Mapping) else ""
                raise ValueError(f"expected a table, got {type(value).__name__} {shown(value)}{hint}")
            return fields(value, kind)
        return structure_table

    c.register_structure_hook_factory(attrs.has, table)
    return c


_converter: cattrs.Converter | None = None


def the_converter() -> cattrs.Converter:
    """The project's one converter (configuration in, reports out), made on first use: cattrs
    (with typing_extensions) is imported by the first configuration loaded, not by importing
    the API, and a ``ModelManager()`` without a configuration never needs it."""
    global _converter
    if _converter is None:
        _converter = _make_converter()
    return _converter


def __getattr__(name: str) -> Any:
    # ``converter`` stays a module attribute (it is in __all__), made when first asked for.
    if name == "converter":
        return the_converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dotted(path: str) -> str:
    path = path.removeprefix("$").removeprefix(".")
    return path


def _config_error(exc: BaseException, prefix: str = "") -> ConfigError:
    """Turn a cattrs or validator error into one ConfigError naming every bad field."""
    from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

    problems: list[tuple[str, str]] = []

    def walk(e: BaseException, path: str) -> None:
        if isinstance(e, ForbiddenExtraKeysError):
            for key in sorted(e.extra_fields, key=str):
                problems.append((f"{path}.{key}".lstrip("."),
                                 unknown_key_hint(key, getattr(e, "cl", None), path.lstrip("."))))
            return
        if isinstance(e, ClassValidationError | IterableValidationError):
            for sub in e.exceptions:
                note = next((n for n in getattr(sub, "__notes__", [])), "")
                walk(sub, path + _note_path(note))
            return
        if isinstance(e, ConfigError | InvalidRequest):
            inner = f"{path}.{e.field}" if e.field else path
            msg = str(e).removeprefix(f"{e.field}: ") if e.field else str(e)
            problems.append((inner.lstrip("."), msg))
            return
        if isinstance(e, KeyError):
            problems.append((path.lstrip("."), f"required field missing {e}"))
            return
        problems.append((path.lstrip("."), str(e)))

    walk(exc, prefix)
    if not problems:
        return ConfigError(_bounded(str(exc)), field=prefix or None)
    # Every problem's path and message bounded, and how many are listed: the values and keys
    # they quote are the user's, of any size (a 100 KB string came back whole).
    problems = [(_bounded(f), _bounded(m)) for f, m in problems]
    field, first = problems[0]
    also = [f"{f}: {m}" for f, m in problems[1:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        also.append(f"and {len(problems) - MAX_PROBLEMS} more")
    msg = first if not also else first + "; also: " + "; ".join(also)
    return ConfigError(msg, field=field or None)


#: How many problems one ConfigError lists, and how long a field path or message may be.
MAX_PROBLEMS, MAX_PROBLEM_CHARS = 10, 200


def _bounded(text: str) -> str:
    if len(text) <= MAX_PROBLEM_CHARS:
        return text
    return f"{text[:MAX_PROBLEM_CHARS - 30]}... ({len(text):,} characters)"


def _note_path(note: str) -> str:
    # cattrs notes read "Structuring class Config @ attribute providers" or
    # "Structuring typing.Tuple @ index 0" / "... @ key 'x'".
    if "@ attribute " in note:
        return "." + note.split("@ attribute ", 1)[1].strip()
    if "@ index " in note:
        return f"[{note.split('@ index ', 1)[1].strip()}]"
    if "@ key " in note:
        return "." + note.split("@ key ", 1)[1].strip().strip("'\"")
    return ""


def _register_embedded_passwords(data: Any) -> None:
    """Register the password of every URL or connection string anywhere in ``data``
    (``scheme://user:PW@host``, ``?password=PW``, a DSN's ``password=PW``; see
    :func:`squirrel_models.secrets.embedded_passwords`) before any check can quote a value:
    a URL pasted into the wrong field is then shown masked in its error, as everywhere else.
    Without this, a password was registered only when the field meant to hold its URL was
    read, which a mistake elsewhere in the same configuration could come before."""
    stack, seen = [data], set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "://" in item or "password" in item.lower():
                from .secrets import embedded_passwords, register

                for password in embedded_passwords(item):
                    register(password)
        elif isinstance(item, Mapping | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, Mapping):  # keys and values, not items(): their pairs are
                stack.extend(item.keys())  # temporaries whose ids the next ones reuse
                stack.extend(item.values())
            else:
                stack.extend(item)


def _all_defaults(cls: type[Any]) -> bool:
    """Whether ``cls`` is an attrs class whose every ``__init__`` field has a default."""
    return attrs.has(cls) and all(f.default is not attrs.NOTHING
                                  for f in attrs.fields(cls) if f.init)


def structure(data: Any, cls: type[T], *, field: str = "") -> T:
    """Structure ``data`` into ``cls``; any problem is a :class:`ConfigError` naming the field."""
    _register_embedded_passwords(data)
    if isinstance(data, Mapping) and not data and _all_defaults(cls):
        # An empty table (the built-ins' options, most often) is the class's defaults, as the
        # converter's hook would build it, with the same validators and the same errors: no
        # need to import cattrs and generate the class's structuring code for it.
        try:
            return cls()
        except (ConfigError, ValueError, TypeError, InvalidRequest) as e:
            raise _config_error(e, field) from None
    converter = the_converter()
    from cattrs import BaseValidationError  # imported with the converter

    try:
        return converter.structure(data, cls)
    except ConfigError as e:  # raised by a validator at the top level
        raise _config_error(e, field) from None
    except (BaseValidationError, ValueError, TypeError, InvalidRequest) as e:
        raise _config_error(e, field) from None


def load_config(data: Mapping[str, Any] | Config) -> Config:
    """A :class:`Config` from a mapping (a parsed TOML document, say)."""
    if isinstance(data, Config):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table, got {type(data).__name__}")
    return structure(dict(data), Config)


def _toml_hint(message: str, text: str) -> str:
    """What two of tomllib's messages mean for a configuration. "Cannot mutate immutable
    namespace ('budget', 'limits')": the docs show both ``limits = [...]`` and
    ``[[budget.limits]]``, and pasting one under the other is the usual way to get it.
    "Invalid initial character for a key part" (or another) on a line inside an inline table
    left open: ``models = [{ name = "x",`` continued on the next line reads naturally, and
    TOML 1.0 refuses it."""
    found = re.search(r"Cannot mutate immutable namespace \(([^)]*)\)", message)
    if found is None and message.endswith("(at end of document)"):
        # tomllib names no line then (an unterminated string, say): the last one is where
        # it stopped reading, and what is open was opened above it
        return (f"; the file ends at line {text.count(chr(10)) + 1} with a string, array or "
                "table opened above still open")
    if found is None and (sub := _sub_table_first(message, text)) is not None:
        return sub
    if found is None:
        at = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if at is not None and _inline_table_open(text, int(at[1]), int(at[2])):
            return ("; a line break inside an inline table ({ ... }) is not TOML: write the "
                    "table on one line, or as a [table] or [[array of tables]] of its own")
        return ""
    name = ".".join(part.strip().strip("'\"") for part in found[1].split(",") if part.strip())
    return (f"; {name} was written inline ({name.rsplit('.', 1)[-1]} = [...] or {{ ... }}), which "
            f"a later [{name}] or [[{name}]] header cannot extend: write it one way")


def _sub_table_first(message: str, text: str) -> str | None:
    """The hint for a ``[[providers.models]]`` (or ``[providers.options]``) written above the
    first ``[[providers]]``: TOML then makes ``providers`` a table, and the ``[[providers]]``
    header below fails with "Cannot overwrite a value" at a line that looks right."""
    at = re.search(r"\(at line (\d+), column \d+\)", message)
    lines = text.split("\n")
    if at is None or not 0 < int(at[1]) <= len(lines):
        return None
    header = re.fullmatch(r"\s*\[\[\s*([\w.-]+)\s*\]\]\s*(?:#.*)?", lines[int(at[1]) - 1])
    if header is None:
        return None
    name = header[1]
    if not any(re.match(rf"\s*\[\[?\s*{re.escape(name)}\.", line) for line in lines[:int(at[1]) - 1]):
        return None
    return (f"; a [{name}.…] table is written above the first [[{name}]]: write each below the "
            f"[[{name}]] entry it belongs to")


def _inline_table_open(text: str, line: int, column: int) -> bool:
    """Whether a line break inside an inline table is what TOML refused at ``line`` and
    ``column`` (1-based): a ``{`` still open there and either the error at the end of its
    line (the line break itself) or the ``{`` opened on an earlier line. Braces outside
    strings and comments, one line at a time (a hint, not a parser). Any other mistake inside
    a one-line table (a bad escape, a stray character) gets no such hint."""
    opened: list[int] = []  # the line of each ``{`` still open
    rows = [row.removesuffix("\r") for row in text.split("\n")[:line]]  # TOML's lines
    at_line_end = len(rows) == line and column > len(rows[-1])
    if len(rows) == line:
        rows[-1] = rows[-1][: column - 1]
    for number, row in enumerate(rows, 1):
        quote = ""
        escaped = False
        for c in row:
            if quote:
                if escaped:
                    escaped = False
                elif c == "\\" and quote == '"':
                    escaped = True
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == "#":
                break
            elif c == "{":
                opened.append(number)
            elif c == "}" and opened:
                opened.pop()
    return bool(opened) and (at_line_end or opened[0] < line)


def load_toml(path: str | Path) -> Config:
    """A :class:`Config` from a TOML file; syntax errors name the file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (line {line}, byte {e.start}); TOML files must be "
                          "UTF-8") from None
    # A byte-order mark is no content: Windows editors (Notepad, PowerShell's Out-File) write
    # one, and tomllib refused it as "Invalid statement (at line 1, column 1)".
    text = text.removeprefix("\ufeff")
    import tomllib  # here: an application configured from a mapping never reads TOML

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}{_toml_hint(str(e), text)}") from None
    except RecursionError:  # tomllib reads nested arrays and tables by recursion
        raise ConfigError(f"{p}: invalid TOML: arrays or tables nested too deeply to read "
                          "(no configuration nests more than a few levels)") from None
    # Relative paths in the file mean "next to this file", wherever the program runs from.
    base = p.expanduser().resolve().parent
    given = data.get("base_dir")
    if isinstance(given, str):
        base = base / Path(given).expanduser()
    elif given is not None:
        raise ConfigError(f"expected str, got {type(given).__name__} {given!r}",
                          field="base_dir")
    data["base_dir"] = str(base)
    return load_config(data)


#: Metadata key of an options field that holds a filesystem path (a string, or a list of
#: strings): :func:`structure_options` resolves a relative one against the configuration's
#: ``base_dir`` (the configuration file's folder). Declare such a field with
#: :func:`path_option`.
PATH_OPTION = "squirrel_models.path"


def path_option(**kw: Any) -> Any:
    """``attrs.field(**kw)`` marked as a path (see :data:`PATH_OPTION`)."""
    metadata = dict(kw.pop("metadata", None) or {})
    metadata[PATH_OPTION] = True
    return attrs.field(metadata=metadata, **kw)


def _resolve(value: str, base: Path) -> str:
    if not value or value == ":memory:":
        return value  # not a file: the options' own validator says so
    path = Path(value).expanduser()
    return value if path.is_absolute() else str(base / path)


def resolve_paths(options: T, base_dir: str | Path | None) -> T:
    """``options`` (an attrs instance) with every :func:`path_option` field that is relative
    made absolute against ``base_dir`` (``~`` is expanded first); unchanged without one."""
    if base_dir is None or not attrs.has(type(options)):
        return options
    base = Path(base_dir)
    changes: dict[str, Any] = {}
    for f in attrs.fields(type(options)):  # type: ignore[arg-type]
        if not f.metadata.get(PATH_OPTION) or not f.init:
            continue
        value = getattr(options, f.name)
        if isinstance(value, str):
            new: Any = _resolve(value, base)
        elif isinstance(value, tuple | list):
            new = type(value)(_resolve(v, base) if isinstance(v, str) else v for v in value)
        else:
            continue
        if new != value:
            changes[f.alias or f.name] = new
    return attrs.evolve(options, **changes) if changes else options  # type: ignore[misc]


def structure_options(data: Mapping[str, Any], options_type: type[T] | None, *, field: str,
                      base_dir: str | Path | None = None) -> T | Mapping[str, Any]:
    """A plugin's ``options`` table as its typed options class, errors prefixed by ``field``;
    relative :func:`path_option` fields resolved against ``base_dir`` when given."""
    if options_type is None:
        return dict(data)
    return resolve_paths(structure(dict(data), options_type, field=field), base_dir)
