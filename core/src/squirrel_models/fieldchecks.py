"""The checks and conversions the value types (:mod:`squirrel_models.types`) share: each refuses
bad input with :class:`~squirrel_models.errors.InvalidRequest` naming the field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import attrs

from .errors import ConfigError, InvalidRequest, shown


def _frozenset(value: Any) -> Any:
    """A set of names (a string: a set of one); what cannot be one is left for _check_names."""
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, Mapping | bytes | bytearray) or not isinstance(value, Iterable):
        return value  # refused by _check_names, naming the field
    try:
        return frozenset(value)
    except TypeError:  # unhashable items
        return value


def _number_in(value: Any, low: float, high: float) -> bool:
    """``value`` is a number (not a bool) in ``low..high``; an int too large for a float is
    out of range, not an OverflowError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and low <= value <= high
    except OverflowError:
        return False


def _check_names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A set of names: a string is a set of one, a list of strings a set; anything else (a
    number, a mapping, non-string items) is refused, naming the field."""
    if value is None and attribute.default is None:
        return
    if not isinstance(value, frozenset) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"expected a string or a list of strings, got {value!r}"[:200], field=attribute.name)


#: The longest name a request's requirements may hold (a capability, a tag, a provider name or
#: a model id): far above any real one, so a message that quotes it stays a bounded line.
MAX_REQUIRED_NAME = 1000


def _check_required_names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A set of names a model must answer to (see :func:`_check_names`), each 1 to
    :data:`MAX_REQUIRED_NAME` printable characters: no configured name holds a line break, a
    NUL or a megabyte, and every message and exclusion reason that quotes the name (one line
    in the CLI, the decision record, a log line) would carry it whole."""
    _check_names(instance, attribute, value)
    for name in value or ():
        if not name or len(name) > MAX_REQUIRED_NAME or not name.isprintable():
            raise InvalidRequest(f"each name must be 1 to {MAX_REQUIRED_NAME:,} printable characters, "
                                 f"got {shown(name)}", field=attribute.name)


def _items(value: Any, field: str) -> tuple[Any, ...]:
    """``value`` as a tuple; a string, a mapping or a scalar where a list belongs is refused
    (iterating would split a string into characters)."""
    if type(value) is tuple:
        return value
    if type(value) is list:
        return tuple(value)
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidRequest(f"expected a list, got {type(value).__name__}", field=field)
    return tuple(value)


def _check_text(value: Any, field: str, *, optional: bool = False) -> None:
    """A str of valid Unicode: a lone surrogate cannot be encoded, so no upstream takes it."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidRequest(f"expected a string, got {type(value).__name__}", field=field)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRequest(f"is not valid Unicode (a lone surrogate {value[e.start]!r} at "
                                 f"index {e.start})", field=field) from None


#: How deeply lists and objects may nest in a request's free-form JSON (tools, a response
#: schema, passed-through fields). A real schema nests a few levels; the bound keeps every
#: later reader (a plugin's walker, a grammar converter, an encoder deeper in the stack) far
#: from Python's recursion limit, which a value the encoder took at depth 400 reached there.
MAX_JSON_DEPTH = 100


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` deep in ``value`` (without recursion;
    depth first, so a value that holds itself is found at once)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))
    return False


def _check_json(value: Any, field: str) -> None:
    """JSON-serialisable as it will be sent (the only form a provider can use), and nested at
    most :data:`MAX_JSON_DEPTH` deep."""
    if _nested_deeper_than(value, MAX_JSON_DEPTH):
        raise InvalidRequest(f"is nested more than {MAX_JSON_DEPTH} levels deep (lists and objects "
                             "inside one another)", field=field)
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as e:
        raise InvalidRequest(f"is not JSON-serialisable ({type(e).__name__}: {e})"[:200], field=field) from None


#: The longest budget key (a user, team or tenant id: an e-mail address fits). Every backend
#: keys its rows by it: PostgreSQL's index refused a key of a few thousand characters.
MAX_BUDGET_KEY = 256


def budget_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a budget key, or None: it is 1..:data:`MAX_BUDGET_KEY` printable
    characters (PostgreSQL refuses a NUL; a line break split the CLI's lines)."""
    if not key:
        return "must be a non-empty string"
    if len(key) > MAX_BUDGET_KEY:
        return f"must be at most {MAX_BUDGET_KEY} characters, got {len(key):,}"
    if not key.isprintable():
        bad = next(c for c in key if not c.isprintable())
        return f"must be printable text; it holds {bad!r} at index {key.index(bad)}"
    return None


def check_scope(instance: Any, attribute: Any, value: str) -> None:
    """An attrs validator of a budget or rate-limit scope: ``global``, ``provider:<name>``,
    ``model:<id>``, ``key:*`` or ``key:<key>``, the name, id or key one
    :func:`budget_key_problem` takes: every store keys its rows by the scope (PostgreSQL
    refuses a NUL and an index entry of thousands of characters) and ``squirrel budget``
    prints it as one line."""
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {type(value).__name__}", field="scope")
    kind, _, rest = value.partition(":")
    if value == "global" or (kind == "key" and rest == "*"):
        return
    if kind in ("provider", "model", "key") and rest:
        if (why := budget_key_problem(rest)) is None:
            return
        what = {"provider": "provider name", "model": "model id"}.get(kind, "key")
        raise ConfigError(f"the {what} of {shown(value)} {why}", field="scope")
    size = f" ({len(value):,} characters)" if len(value) > 60 else ""  # shown() cuts it at 60
    raise ConfigError(
        f"unknown scope {shown(value)}{size}; use global, provider:<name>, model:<id>, key:<key> or key:*",
        field="scope",
    )


def _decimal_or_none(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value  # a bool is refused by the field's validator, which names the field
    if isinstance(value, float):
        value = repr(value)  # 0.1 -> Decimal("0.1"), not 0.1000000000000000055...
    elif isinstance(value, str) and number_problem(value, signed=True) is not None:
        return value  # text outside the strict grammar: the validator names field and problem
    try:
        amount = Decimal(value)
    except (ArithmeticError, TypeError, ValueError):
        return value  # refused by the validator, naming the field
    # "-0" is zero: kept signed, every cost it priced showed as -0 (headers, ledger, CLI)
    return amount.copy_abs() if amount.is_zero() else amount


# --- numbers read from text ----------------------------------------------------------------
# Python reads more than a user means: int(), float() and Decimal() take "1_000", full-width
# and other Unicode digits ("\uff11\uff12"), surrounding whitespace, "NaN", "sNaN", "Infinity",
# "1e999999" and a leading "+". A header, a CLI argument, a TOML string or an environment
# variable is read with these instead: one grammar per kind, and what is wrong said.

#: The longest number read from text: far beyond any real one (a megabyte of digits cost
#: int() and Decimal() seconds, and a message quoting it a megabyte).
MAX_NUMBER_TEXT = 64

_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NOT_FINITE = frozenset({"nan", "snan", "inf", "infinity"})


#: Currency signs people put before or after an amount.
_CURRENCY = frozenset("$€£¥₹¢₩₽")


def number_problem(text: Any, *, whole: bool = False, signed: bool = False) -> str | None:
    """Why ``text`` is not a number of the strict grammar, or None. The grammar: ASCII digits
    with (unless ``whole``) at most one decimal point between digits; a leading ``-`` only
    when ``signed``; nothing else (no ``+``, underscore, exponent, whitespace, NaN or
    infinity, other digits), at most :data:`MAX_NUMBER_TEXT` characters."""
    if not isinstance(text, str):
        return f"expected text, got {type(text).__name__}"
    what = "a whole number such as 12" if whole else "a decimal number such as 0.05"
    if not text:
        return f"is empty; write {what}"
    if len(text) > MAX_NUMBER_TEXT:
        return f"is {len(text):,} characters long; a number here has at most {MAX_NUMBER_TEXT}"
    body = text[1:] if text[0] == "-" and signed else text
    if _DECIMAL.fullmatch(body):
        return "must be a whole number (no decimal point)" if whole and "." in body else None
    if _WHOLE.fullmatch(body):
        return None
    # The two ways people write money in prose: "$5" and "1,000" (or "0,50").
    if any(c in _CURRENCY for c in text) or "USD" in text.upper():
        return f"holds a currency sign; write {what} alone (amounts are US dollars: 5, not $5)"
    if "," in text:
        return (f"holds a comma; write {what} without separators (1000, not 1,000)" if whole else
                f"holds a comma; write {what} without separators, with a point (1000.5, not 1,000.5 "
                "or 1000,5)")
    bad = next((c for c in text if not c.isascii()), None)
    if bad is not None:
        return (f"holds {bad!r} (U+{ord(bad):04X}); write {what} in ASCII digits 0-9"
                if bad.isdigit() or bad.isnumeric() else f"holds {bad!r}; write {what}")
    if text != text.strip() or any(c.isspace() for c in text):
        return f"holds whitespace; write {what} alone"
    if "_" in text:
        return f"holds an underscore; write {what} without separators (1000, not 1_000)"
    if text.lstrip("+-").lower() in _NOT_FINITE:
        return f"is not a finite number; write {what}"
    if text[0] == "+":
        return f"has a + sign; write {what} without it"
    if text[0] == "-" and not signed and _DECIMAL.fullmatch(text[1:]):
        return "must not be negative"
    if "e" in text.lower() and not whole:
        return f"has an exponent; write {what} out in full (0.001, not 1e-3)"
    return f"is not {what}"


def read_decimal(text: str, *, signed: bool = False) -> Decimal:
    """``text`` as a Decimal by :func:`number_problem`'s grammar; ValueError saying what is
    wrong otherwise."""
    if (why := number_problem(text, signed=signed)) is not None:
        raise ValueError(why)
    return Decimal(text)


def read_int(text: str, *, signed: bool = False) -> int:
    """``text`` as an int by :func:`number_problem`'s grammar (ASCII digits); ValueError
    saying what is wrong otherwise."""
    if (why := number_problem(text, whole=True, signed=signed)) is not None:
        raise ValueError(why)
    return int(text)


def read_float(text: str, *, signed: bool = False) -> float:
    """``text`` as a float by :func:`number_problem`'s grammar (a decimal number: finite, no
    exponent); ValueError saying what is wrong otherwise."""
    if (why := number_problem(text, signed=signed)) is not None:
        raise ValueError(why)
    return float(text)
