"""The request fields beyond messages: response_format, top_p, seed, stop, n, user and image
parts. Each is validated with a typed error naming the field; what a request needs of a model
(images: ``vision``, JSON mode: ``json_mode``, a schema: ``json_schema``) is a hard filter
of selection with a reason; ``n`` answers reserve, charge and return ``n`` times the output."""

from __future__ import annotations

import base64
from decimal import Decimal

import attrs
import pytest
from squirrel_models import (
    AIRequest,
    BudgetExceeded,
    CapabilityNotSupported,
    Choice,
    ImagePart,
    InvalidRequest,
    MalformedResponse,
    Message,
    ModelRequirements,
    ProviderResponse,
    ResponseFormat,
    TextPart,
    Usage,
)
from squirrel_models.testing import Reply
from squirrel_models.tokens import upper_bound
from squirrel_models.types import IMAGE_TOKENS
from squirrel_models.upstream import message_dict, request_fields

from .helpers import card, provider

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
DATA_URL = f"data:image/png;base64,{PNG}"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def ask(**kw: object) -> AIRequest:
    return AIRequest.from_prompt("hi", **kw)  # type: ignore[arg-type]


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "field"), [
    ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"), ({"top_p": float("nan")}, "top_p"),
    ({"top_p": True}, "top_p"), ({"top_p": "0.5"}, "top_p"),
    ({"seed": 1.0}, "seed"), ({"seed": True}, "seed"), ({"seed": 2**63}, "seed"), ({"seed": "1"}, "seed"),
    ({"n": 0}, "n"), ({"n": 129}, "n"), ({"n": 2.0}, "n"), ({"n": True}, "n"), ({"n": None}, "n"),
    ({"user": ""}, "user"), ({"user": "x" * 257}, "user"), ({"user": 5}, "user"),
    ({"user": "a\ud800"}, "user"),
    ({"stop": [1]}, "stop[0]"), ({"stop": {"a": 1}}, "stop"),
    ({"response_format": "json_schema"}, "response_format"),
    ({"response_format": 3}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_object", "extra": 1}}, "response_format.extra"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA, "nme": "x"}}},
     "response_format.json_schema.nme"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA, "name": "a b"}}},
     "response_format.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA, "strict": "yes"}}},
     "response_format.strict"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"x": {1, 2}}}}},
     "response_format.schema"),
])
def test_bad_values_name_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        ask(**kw)
    assert err.value.field == field


def test_good_values_are_kept() -> None:
    r = ask(top_p=0.9, seed=-7, n=3, user="u-1", stop="END",
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA,
                                                                    "strict": True}})
    assert (r.top_p, r.seed, r.n, r.user, r.stop) == (0.9, -7, 3, "u-1", ("END",))
    assert r.response_format == ResponseFormat.json_schema(SCHEMA, "city", strict=True)
    assert r.response_format.to_openai() == {
        "type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    assert hash(r) == hash(attrs.evolve(r))  # frozen values: hashable, equal when rebuilt
    assert ask(response_format="json_object").response_format == ResponseFormat.json()
    assert ask(response_format={"type": "text"}).needs == (frozenset(), frozenset())
    assert ask().n == 1 and ask().response_format is None


def test_fields_are_frozen() -> None:
    r = ask(top_p=0.5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        r.top_p = 0.1  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ResponseFormat.json().type = "text"  # type: ignore[misc]


def test_schema_equality_does_not_depend_on_key_order() -> None:
    a = ResponseFormat.json_schema({"type": "object", "required": []})
    b = ResponseFormat.json_schema({"required": [], "type": "object"})
    assert a == b and hash(a) == hash(b)
    assert a != ResponseFormat.json_schema({"type": "array"})


# --- image parts -------------------------------------------------------------------------


def test_image_parts_from_parts_and_openai_mappings() -> None:
    m = Message.user(["What is this?", ImagePart("https://example.test/cat.png", "low")])
    same = Message("user", [{"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "https://example.test/cat.png",
                                                                "detail": "low"}}])
    assert m == same and hash(m) == hash(same)
    assert m.text == "What is this?" and m.images == (ImagePart("https://example.test/cat.png", "low"),)
    r = AIRequest([m])
    assert r.needs == (frozenset({"vision"}), frozenset()) and r.images
    assert message_dict(m) == {"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png", "detail": "low"}}]}
    img = ImagePart.from_bytes(b"\x89PNG\r\n\x1a\n fake image bytes")
    assert img.url == DATA_URL and img.media_type == "image/png"
    assert img.data() == b"\x89PNG\r\n\x1a\n fake image bytes"
    # text-only parts need no vision
    assert AIRequest([Message.user([TextPart("a"), "b"])]).needs == (frozenset(), frozenset())


@pytest.mark.parametrize(("content", "field"), [
    ([ImagePart("ftp://x.test/a.png")], "messages[0].content[0].image_url.url"),
    ([ImagePart("https://")], "messages[0].content[0].image_url.url"),
    ([ImagePart("https:///a.png")], "messages[0].content[0].image_url.url"),
    ([ImagePart("cat.png")], "messages[0].content[0].image_url.url"),
    ([ImagePart("data:image/png;base64,***")], "messages[0].content[0].image_url.url"),
    ([ImagePart("data:image/png;base64,")], "messages[0].content[0].image_url.url"),
    ([ImagePart("data:text/plain;base64,aGk=")], "messages[0].content[0].image_url.url"),
    ([ImagePart(DATA_URL, "ultra")], "messages[0].content[0].image_url.detail"),  # type: ignore[arg-type]
    ([ImagePart(5)], "messages[0].content[0].image_url.url"),  # type: ignore[arg-type]
    ([{"type": "image_url", "image_url": {"url": DATA_URL, "zoom": 2}}], "messages[0].content[0]"),
    ([{"type": "input_audio", "input_audio": {}}], "messages[0].content[0]"),
    ([{"type": "text"}], "messages[0].content[0].text"),
    ([3], "messages[0].content[0]"),
    ({"type": "text", "text": "x"}, "messages[0].content"),
    (b"bytes", "messages[0].content"),
])
def test_bad_parts_name_the_part(content: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        AIRequest([Message("user", content)])  # type: ignore[arg-type]
    assert err.value.field == field


def test_only_user_messages_take_images() -> None:
    with pytest.raises(InvalidRequest) as err:
        AIRequest([Message("system", [ImagePart(DATA_URL)])])
    assert err.value.field == "messages[0].content"
    assert AIRequest([Message("system", [TextPart("be brief")]), Message.user("hi")]).messages[0].text == "be brief"


def test_an_image_counts_in_the_upper_bound() -> None:
    plain = upper_bound(AIRequest.from_prompt("look")).tokens
    with_image = upper_bound(AIRequest([Message.user(["look", ImagePart(DATA_URL)])])).tokens
    assert with_image >= plain + IMAGE_TOKENS


def test_request_fields_for_the_wire() -> None:
    assert request_fields(ask()) == {}
    assert request_fields(ask(top_p=0.5, seed=1, n=2, user="u", response_format=ResponseFormat.json())) == {
        "top_p": 0.5, "seed": 1, "n": 2, "user": "u", "response_format": {"type": "json_object"}}


# --- selection ---------------------------------------------------------------------------


def _provider():  # type: ignore[no-untyped-def]
    return provider("p", card("plain", price=("0.1", "0.1")),
                    card("eyes", capabilities={"chat", "vision"}),
                    card("jsonish", features={"streaming", "json_mode"}),
                    card("schema", features={"streaming", "json_mode", "json_schema"}, price=("5", "5")))


@pytest.mark.anyio
async def test_request_needs_are_a_hard_filter_with_reasons(squirrel_manager) -> None:
    p = _provider()
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        seen = AIRequest([Message.user(["what is this?", ImagePart(DATA_URL)])], max_tokens=5)
        r = await mm.complete(seen)
        assert r.model == "p/eyes"
        assert p.last_request is not None and p.last_request.messages[0].images
        d = mm.rank(request=seen)
        assert [c.card.id for c in d.candidates] == ["p/eyes"]
        assert d.excluded["p/plain"] == "lacks capability vision"
        assert (await mm.complete(ask(max_tokens=5, response_format=ResponseFormat.json()))).model == "p/jsonish"
        schema = ask(max_tokens=5, response_format=ResponseFormat.json_schema(SCHEMA))
        assert (await mm.complete(schema)).model == "p/schema"
        assert mm.rank(request=schema).excluded["p/jsonish"] == "lacks feature json_schema"
        # the caller's own requirements are kept, and joined with the request's
        with pytest.raises(CapabilityNotSupported) as err:
            await mm.complete(seen, ModelRequirements(required_features={"json_mode"}))
        assert "p/eyes: lacks feature json_mode" in str(err.value)
        assert mm.get_model(request=schema).id == "p/schema"
        # a plain request may go to any model
        assert len(mm.rank(request=ask(max_tokens=5)).candidates) == 4


@pytest.mark.anyio
async def test_fallback_graph_edges_keep_the_request_needs(squirrel_manager) -> None:
    """A [fallback.graph] edge reaches past the models pin, never past what the request needs."""
    from squirrel_models import SquirrelError

    p = _provider()
    p.failing["schema"] = 500
    cfg = {"fallback": {"graph": {"p/schema": ["p/plain", "p/jsonish"]}, "max_attempts": 3}}
    mm = squirrel_manager(cfg)
    for c in p.models:
        mm.register_model(c, p)  # before start: the graph's names are checked then
    async with mm:
        req = ask(max_tokens=5, response_format=ResponseFormat.json_schema(SCHEMA))
        with pytest.raises(SquirrelError) as err:
            await mm.complete(req, ModelRequirements(models={"p/schema"}))
        # JSON mode alone: the edge to p/jsonish may be followed, not the one to p/plain
        r = await mm.complete(ask(max_tokens=5, response_format=ResponseFormat.json()),
                              ModelRequirements(models={"p/schema"}))
    assert p.calls["plain"] == 0, err.value
    assert r.model == "p/jsonish"


# --- n answers ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_n_answers_reserve_charge_and_return_n_times(squirrel_manager) -> None:
    p = provider("p", card("a", price=("1000", "1000")))
    p.script("a", Reply("one two three"))
    # output 10 tokens at $1000/M = $0.01 each answer; the prompt is about 4 tokens
    cfg = {"budget": {"limits": [{"scope": "global", "limit": "0.025"}]}}
    async with squirrel_manager(cfg) as mm:
        for c in p.models:
            mm.register_model(c, p)
        est = mm.tokens.estimate(ask(max_tokens=10, n=3), p.models[0])
        assert (est.max_output, est.total_output) == (10, 30)
        assert est.worst_case_cost == Decimal(1000) * (est.prompt.tokens + 30) / 1_000_000
        with pytest.raises(BudgetExceeded):  # 3 x 10 output tokens do not fit $0.025
            await mm.complete(ask(max_tokens=10, n=3))
        assert p.calls["a"] == 0
        r = await mm.complete(ask(max_tokens=10, n=2))
        (u,) = await mm.tokens.check_budget(p.models[0])
    assert p.last_request is not None and p.last_request.max_tokens == 10  # per answer
    assert [c.text for c in r.choices] == ["one two three"] * 2 and [c.index for c in r.choices] == [0, 1]
    assert r.text == "one two three"
    assert r.usage.output_tokens == 6 and r.cost == Decimal(1000) * r.usage.total_tokens / 1_000_000
    assert u.committed == r.cost and u.reserved == 0


@pytest.mark.anyio
async def test_one_answer_has_one_choice(squirrel_manager) -> None:
    p = provider("p", card("a"))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        r = await mm.complete(ask(max_tokens=5))
    assert r.choices == (Choice(0, r.text, r.finish_reason, ()),)


@pytest.mark.anyio
async def test_streams_take_one_answer(squirrel_manager) -> None:
    p = provider("p", card("a"))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        with pytest.raises(InvalidRequest) as err:
            async with mm.stream(ask(n=2)):
                pass
    assert err.value.field == "n" and p.calls["a"] == 0


class _Short:
    """A provider that answers a request for n with one choice (a broken upstream)."""

    def __init__(self) -> None:
        self.models = [card("a", price=("1000", "1000"))]

    async def list_models(self):  # type: ignore[no-untyped-def]
        return self.models

    async def complete(self, model, request):  # type: ignore[no-untyped-def]
        return ProviderResponse("x", Usage(3, 4), "stop", None, (), (Choice(0, "x"),))

    async def stream(self, model, request):  # type: ignore[no-untyped-def]
        raise NotImplementedError
        yield

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_too_few_choices_are_malformed_and_charged(squirrel_manager) -> None:
    prov = _Short()
    cfg = {"budget": {"limits": [{"scope": "global", "limit": "1"}]},
           "fallback": {"options": {"retry": {"max_retries": 0}}}}
    async with squirrel_manager(cfg) as mm:
        mm.register_model(prov.models[0], prov)  # type: ignore[arg-type]
        with pytest.raises(MalformedResponse):
            await mm.complete(ask(max_tokens=5, n=2))
        (u,) = await mm.tokens.check_budget(prov.models[0])
    assert u.reserved == 0 and u.committed == Decimal(1000) * 7 / 1_000_000  # what it reported


# --- the one-pass check of the usual request refuses what the full checks refuse --------------


class _Loud(Message):
    """A subclass: never taken by the one-pass check of plain messages."""


@pytest.mark.parametrize(("kw", "field"), [
    ({"n": True}, "n"), ({"n": 1.0}, "n"), ({"metadata": 0}, "metadata"),
    ({"metadata": []}, "metadata"), ({"metadata": None}, "metadata"), ({"stop": ("\ud800",)}, "stop[0]"),
    ({"messages": [Message("user", "hi"), Message("robot", "hi")]}, "messages[1].role"),
    ({"messages": [Message("user", "caf\u00e9 \ud800")]}, "messages[0].content"),
    ({"messages": [_Loud("user ", "hi")]}, "messages[0].role"),
    ({"messages": [Message("user", "hi", name=3)]}, "messages[0].name"),  # type: ignore[arg-type]
    ({"messages": ["hi"]}, "messages[0]"),
])
def test_the_usual_request_is_checked_in_one_pass_and_the_rest_fully(kw: dict[str, object],
                                                                    field: str) -> None:
    kw = {"messages": [Message("user", "hi")], "max_tokens": 5, **kw}
    with pytest.raises(InvalidRequest) as info:
        AIRequest(**kw)  # type: ignore[arg-type]
    assert info.value.field == field


def test_plain_and_other_messages_give_the_same_request() -> None:
    plain = AIRequest([Message("system", "be brief"), Message("user", "hi")], max_tokens=5)
    other = AIRequest((_Loud("system", "be brief"), Message("user", "hi")), max_tokens=5)
    assert plain.text() == other.text() and plain.needs == other.needs == (frozenset(), frozenset())
    unicode = AIRequest([Message("user", "caf\u00e9")], n=2)
    assert unicode.n == 2 and unicode.messages[0].text == "caf\u00e9"


@pytest.mark.parametrize("name", ["n", "max_tokens", "max_completion_tokens", "stream",
                                  "stream_options", "tools", "tool_choice", "messages", "model",
                                  "temperature", "top_p", "seed", "user", "response_format"])
def test_extra_cannot_set_what_the_request_reads_itself(name: str) -> None:
    # extra is sent as it is, over the fields the request set: extra={"n": 50} asked the
    # upstream for 50 answers while the budget reserved one (50 times its cost, spent), and
    # max_completion_tokens lifted the output cap the reservation was made of. The same rule
    # as the gateway's passthrough (openai_format.passable).
    with pytest.raises(InvalidRequest) as info:
        AIRequest.from_prompt("hi", extra={name: 4})
    assert info.value.field == f"extra.{name}"


@pytest.mark.parametrize(("name", "value"), [("service_tier", "priority"), ("best_of", 4),
                                             ("modalities", ["text", "audio"]), ("web_search_options", {})])
def test_extra_cannot_set_what_changes_the_price(name: str, value: object) -> None:
    # Billed upstream beyond the configured prices the budget reserved with (priority pricing,
    # four answers, audio tokens, a fee per search): refused, saying why.
    with pytest.raises(InvalidRequest, match="changes what the request costs") as info:
        AIRequest.from_prompt("hi", extra={name: value})
    assert info.value.field == f"extra.{name}"


def test_extra_passes_other_openai_fields() -> None:
    r = AIRequest.from_prompt("hi", extra={"logit_bias": {"50256": -100}, "logprobs": True})
    assert r.extra == {"logit_bias": {"50256": -100}, "logprobs": True}
