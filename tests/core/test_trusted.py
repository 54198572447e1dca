"""The request path builds some of its frozen values through ``trusted.builder`` (slots set
through their descriptors, not ``object.__setattr__`` by name): each builder makes the same
value as its class's ``__init__`` from the same arguments, every slot set alike, and no
builder is made for a class whose ``__init__`` checks or computes anything (but a check of what a
plugin passes, skipped by a ``checked`` builder for what the core made: ``UpstreamLimits``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from squirrel_models.decision import Decision, new_decision
from squirrel_models.errors import MalformedResponse
from squirrel_models.ratelimit import UpstreamLimits, new_upstream_limits
from squirrel_models.responses import new_attempt_record, new_chunk, new_provider_response, new_response
from squirrel_models.scoring import RequestShape, new_shape
from squirrel_models.trusted import ATTRS_INITS, builder
from squirrel_models.types import (
    AIRequest,
    AIResponse,
    AttemptRecord,
    Message,
    ModelRequirements,
    ProviderResponse,
    StreamChunk,
    Usage,
)

BUILDERS = [(AttemptRecord, new_attempt_record), (AIResponse, new_response),
            (Decision, new_decision), (RequestShape, new_shape),
            (UpstreamLimits, new_upstream_limits), (ProviderResponse, new_provider_response),
            (StreamChunk, new_chunk)]
#: Classes whose __init__ checks the values (what a plugin passes), which their builder skips.
CHECKED = (UpstreamLimits,)

_MISSING = object()


def slots(obj: object) -> dict[str, object]:
    """Every field's slot, eq=False and init=False ones included (unset: a marker)."""
    return {f.name: getattr(obj, f.name, _MISSING) for f in attrs.fields(type(obj))}


def same(a: object, b: object) -> None:
    assert type(a) is type(b)
    sa, sb = slots(a), slots(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name] is sb[name], name  # the very objects passed or defaulted


values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                   st.booleans(), st.decimals(allow_nan=False, allow_infinity=False),
                   st.builds(Usage, st.integers(0, 99), st.integers(0, 99)),
                   st.tuples(st.integers()), st.just(ModelRequirements()))


@pytest.mark.parametrize(("cls", "build"), BUILDERS, ids=lambda x: getattr(x, "__name__", ""))
@given(data=st.data())
def test_a_builder_makes_what_init_makes(cls: type, build: Any, data: st.DataObject) -> None:
    fields = [f for f in attrs.fields(cls) if f.init]
    # Positional: the required fields and any number of the rest; then some by keyword.
    required = sum(f.default is attrs.NOTHING for f in fields)
    n = data.draw(st.integers(required, len(fields)))
    args = [data.draw(values) for _ in range(n)]
    kwargs = {f.alias: data.draw(values) for f in fields[n:] if data.draw(st.booleans())}
    trusted = build(*args, **kwargs)
    try:
        checked = cls(*args, **kwargs)
    except MalformedResponse:
        # UpstreamLimits checks what a plugin passes (counts, seconds); its builder makes
        # them of what the core's parser checked, so it skips the check: all else is alike.
        assert cls in CHECKED
        return
    same(checked, trusted)
    if cls is not Decision:  # Decision compares its (lazy) candidates: built by hand below
        assert checked == trusted
        assert repr(checked) == repr(trusted)


def test_the_builders_take_what_init_takes() -> None:
    for cls, build in BUILDERS:
        if any(f.default is attrs.NOTHING for f in attrs.fields(cls)):
            with pytest.raises(TypeError):
                build()  # the required fields are required
        with pytest.raises(TypeError):
            build(*range(len(attrs.fields(cls)) + 1))  # and no more than init takes


def test_a_decision_built_either_way_reads_the_same() -> None:
    excluded, weights, req = {"p/m": "why"}, {"cost": 1.0}, ModelRequirements()
    a = Decision((), excluded, weights, req, True, 0.5)
    b = new_decision((), excluded, weights, req, True, 0.5)
    same(a, b)
    assert a == b and a.cards == b.cards == () and a.to_dict() == b.to_dict()


@attrs.frozen
class _Checked:
    x: int = attrs.field(validator=attrs.validators.instance_of(int))


@attrs.frozen
class _Converted:
    x: int = attrs.field(converter=int)


@attrs.frozen
class _Hooked:
    x: int

    def __attrs_post_init__(self) -> None:
        pass


@attrs.frozen
class _Factory:
    x: list[int] = attrs.field(factory=list)


@attrs.define(slots=False)
class _Dict:
    x: int


@pytest.mark.parametrize("cls", [_Checked, _Converted, _Hooked, _Factory, _Dict, Usage, Decimal])
def test_no_builder_for_a_class_whose_init_checks_or_computes(cls: type) -> None:
    with pytest.raises(TypeError):
        builder(cls)


# --- slot_init: the value types a caller builds on every request -------------------------

def _outcome(make: Any) -> tuple[str, object]:
    try:
        obj = make()
    except Exception as exc:  # the same error, type and message, either way
        return ("error", (type(exc), str(exc), getattr(exc, "field", None)))
    return ("value", {k: (type(v), v) for k, v in slots(obj).items()})


def _both(cls: type, args: list[Any], kwargs: dict[str, Any]) -> None:
    def checked() -> object:
        obj = object.__new__(cls)
        ATTRS_INITS[cls](obj, *args, **kwargs)
        return obj

    assert _outcome(checked) == _outcome(lambda: cls(*args, **kwargs))


texts = st.one_of(st.text(max_size=8), st.sampled_from(["", "hi", "caf\u00e9", "a\x00b", "\ud800"]))
anything = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=False), texts,
                     st.booleans(), st.lists(texts, max_size=2), st.dictionaries(texts, texts, max_size=2),
                     st.tuples())
roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "robot"]), anything)
parts = st.one_of(texts, st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.just(
        "data:image/png;base64,iVBORw0KGgo=")}), anything), max_size=2))


@given(role=roles, content=parts, rest=st.lists(anything, max_size=3))
def test_message_init_is_attrs_init(role: Any, content: Any, rest: list[Any]) -> None:
    _both(Message, [role, content, *rest], {})


@given(counts=st.lists(st.one_of(st.integers(-2, 2**31 + 1), st.booleans(), st.floats(0, 9),
                                 st.none()), max_size=4),
       source=st.one_of(st.sampled_from(["reported", "counted", "estimated", "guessed"]), anything))
def test_usage_init_is_attrs_init(counts: list[Any], source: Any) -> None:
    _both(Usage, counts, {"source": source} if len(counts) == 4 else {})


@given(messages=st.one_of(st.lists(st.builds(Message, st.sampled_from(["user", "system"]), texts),
                                   max_size=3), anything),
       kwargs=st.dictionaries(st.sampled_from(
           ["max_tokens", "temperature", "stop", "tools", "budget_key", "metadata", "tool_choice",
            "response_format", "top_p", "seed", "n", "user", "extra"]),
           st.one_of(anything, st.integers(-1, 200), st.just({"type": "json_object"}),
                     st.sampled_from(["auto", "json_object", "text"])), max_size=4))
def test_request_init_is_attrs_init(messages: Any, kwargs: dict[str, Any]) -> None:
    _both(AIRequest, [messages], kwargs)
    _both(AIRequest, [], {"messages": messages, **kwargs})


def test_every_slot_init_class_is_tested() -> None:
    assert set(ATTRS_INITS) == {Message, AIRequest, Usage}


def test_a_request_built_either_way_is_routed_alike() -> None:
    kwargs = {"messages": [Message("system", "be brief"), Message("user", "caf\u00e9?")],
              "max_tokens": 7, "metadata": {"a": "b"}}
    a, b = object.__new__(AIRequest), AIRequest(**kwargs)  # type: ignore[arg-type]
    ATTRS_INITS[AIRequest](a, **kwargs)
    assert a == b and hash(a) == hash(b)
    assert (a.needs, a._ascii_bytes) == (b.needs, b._ascii_bytes)
