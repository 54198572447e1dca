"""Numbers read from text a user wrote (a header, a CLI argument, a TOML string, an
environment variable) follow one strict grammar (``squirrel_models.fieldchecks``). Python's
own readers take more than a user means: ``Decimal("1_000")`` is 1000, ``int("\\uff11\\uff12")`` 12,
``float(" 5 ")`` 5, ``Decimal("sNaN")`` and ``float("Infinity")`` numbers; each was accepted
where a user typed it, and a gateway read ``X-Squirrel-Max-Cost: 1_000`` as 1000 USD."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from squirrel_models.budget import BudgetLimit
from squirrel_models.cards import Price
from squirrel_models.config import load_config
from squirrel_models.errors import ConfigError, InvalidRequest, SquirrelError
from squirrel_models.fieldchecks import MAX_NUMBER_TEXT, number_problem, read_decimal, read_float, read_int
from squirrel_models.proxies import _entry
from squirrel_models.types import ModelRequirements

ASCII_DIGITS = frozenset("0123456789")
#: What Python's readers take and the grammar does not, mixed with what it does.
PIECES = ["0", "1", "9", "12", ".", "-", "+", "_", "e", "E", "x", " ", "\t", "\n", "\u3000",
          "\u00a0", "nan", "NaN", "sNaN", "inf", "Infinity", "\uff11", "\u0663", "\u00b2",
          "\u2167", "\U0001d7d9", "1e999999", "0x1", "1_000", "."]


def reference(text: str, *, whole: bool, signed: bool) -> bool:
    """The grammar, written without regular expressions: ASCII digits, one point between
    digits unless ``whole``, a leading minus only when ``signed``."""
    if not 0 < len(text) <= MAX_NUMBER_TEXT:
        return False
    body = text[1:] if signed and text.startswith("-") else text
    head, point, tail = body.partition(".")
    if point and (whole or not tail or not set(tail) <= ASCII_DIGITS):
        return False
    return bool(head) and set(head) <= ASCII_DIGITS


texts = (st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
         | st.text(max_size=12)
         | st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,30})?", fullmatch=True))


@given(texts, st.booleans())
@example("1_000", False)
@example("\uff11\uff12", False)
@example(" 5", False)
@example("sNaN", True)
@example("-0", True)
@example("1" * (MAX_NUMBER_TEXT + 1), False)
def test_the_readers_follow_the_grammar(text: str, signed: bool) -> None:
    for whole, read in ((False, read_decimal), (True, read_int), (False, read_float)):
        ok = reference(text, whole=whole, signed=signed)
        why = number_problem(text, whole=whole, signed=signed)
        assert (why is None) == ok, (text, whole, why)
        if ok:
            value = read(text, signed=signed)
            assert value == (int(text) if whole else Decimal(text)) or read is read_float
            assert read is not read_float or value == float(text)
        else:
            assert why and why.isprintable() and len(why) < 200
            with pytest.raises(ValueError, match=f"^{re.escape(why)}$"):
                read(text, signed=signed)


@pytest.mark.parametrize(("text", "problem"), [
    ("1_000", "holds an underscore"),
    ("\uff11\uff12", "holds '\uff11' (U+FF11)"),
    (" 5", "holds whitespace"),
    ("5\n", "holds whitespace"),
    ("NaN", "is not a finite number"),
    ("sNaN", "is not a finite number"),
    ("-Infinity", "is not a finite number"),
    ("1e999999", "has an exponent"),
    ("+5", "has a + sign"),
    ("-5", "must not be negative"),
    ("", "is empty"),
    ("9" * 65, "is 65 characters long"),
])
def test_each_refusal_says_what_is_wrong(text: str, problem: str) -> None:
    assert problem in (number_problem(text) or "")


@pytest.mark.parametrize(("text", "problem"), [
    ("$5", "holds a currency sign; write a decimal number such as 0.05 alone (amounts are US dollars: 5, not $5)"),
    ("5 USD", "holds a currency sign"),
    ("\u20ac5", "holds a currency sign"),
    ("1,000", "holds a comma; write a decimal number such as 0.05 without separators, with a point"),
    ("0,50", "holds a comma"),
])
def test_money_written_as_in_prose_says_what_to_drop(text: str, problem: str) -> None:
    """A budget limit of "$5" or "1,000" was "is not a decimal number such as 0.05", leaving
    the reader to find the character that was wrong."""
    assert problem in (number_problem(text) or ""), number_problem(text)
    with pytest.raises(ConfigError) as info:
        load_config({"budget": {"limits": [{"scope": "global", "limit": text}]}})
    assert info.value.field == "budget.limits[0].limit" and problem in str(info.value)
    assert "without separators (1000, not 1,000)" in (number_problem("1,000", whole=True) or "")


# --- where users write numbers as text -------------------------------------------------------

BAD = ["1_000", "\uff11", " 1", "1 ", "NaN", "sNaN", "Infinity", "1e3", "+1", "0x1"]


@pytest.mark.parametrize("text", BAD)
def test_config_amounts_given_as_strings_are_refused_naming_the_field(text: str) -> None:
    for data, field in (
            ({"budget": {"limits": [{"scope": "global", "limit": text}]}}, "budget.limits[0].limit"),
            ({"requirements": {"max_request_cost": text}}, "requirements.max_request_cost"),
            ({"providers": [{"name": "p", "type": "scripted", "models": [
                {"name": "m", "price": {"input": text, "output": "1"}}]}]},
             "providers[0].models[0].price.input")):
        with pytest.raises(ConfigError) as info:
            load_config(data)
        assert field in str(info.value), str(info.value)
        assert number_problem(text, signed=True) in str(info.value), str(info.value)


def test_config_amounts_in_the_grammar_and_toml_numbers_still_read() -> None:
    cfg = load_config({"budget": {"limits": [{"scope": "global", "limit": "1000.50"},
                                             {"scope": "key:*", "limit": 2.5},
                                             {"scope": "model:a/b", "limit": 3}]}})
    assert [x.limit for x in cfg.budget.limits] == [Decimal("1000.50"), Decimal("2.5"), Decimal(3)]


@pytest.mark.parametrize("text", BAD)
def test_values_made_from_strings_refuse_them_with_a_typed_error(text: str) -> None:
    for make in (lambda: Price(text, "1"), lambda: ModelRequirements(max_request_cost=text),
                 lambda: BudgetLimit("global", "total", limit=text)):
        with pytest.raises(SquirrelError) as info:
            make()
        assert isinstance(info.value, InvalidRequest | ConfigError)
        assert number_problem(text, signed=True) in str(info.value), str(info.value)
    assert Price("0.5", "1").input == Decimal("0.5")


@pytest.mark.parametrize("port", ["\u00b2", "\uff18\uff10", "8_0", "+80", " 80"])
def test_a_no_proxy_port_that_is_no_ascii_number_is_a_malformed_entry(port: str) -> None:
    # "²".isdigit() is True and int("²") raised ValueError out of the proxy settings
    assert _entry(f"example.com:{port}") is None
    assert _entry(f"[::1]:{port}") is None
    assert _entry("example.com:80") == ("example.com", 80)
