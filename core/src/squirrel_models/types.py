"""Value types: requests, responses, usage, prices, model cards and requirements.

All are ``attrs.frozen``: hashable, comparable, safe to share between tasks and threads.
Money is :class:`decimal.Decimal` in US dollars; token counts are ints.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .errors import InvalidRequest, MalformedResponse, shown

if TYPE_CHECKING:
    from .ratelimit import UpstreamLimits

__all__ = [
    "AIRequest",
    "AIResponse",
    "AttemptRecord",
    "Choice",
    "ImagePart",
    "Message",
    "ModelCard",
    "ModelRequirements",
    "Price",
    "ProviderResponse",
    "ResponseFormat",
    "StreamChunk",
    "TextPart",
    "TokenCount",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
ToolChoice = str | Mapping[str, Any]
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
_ROLES = frozenset({"system", "user", "assistant", "tool"})
UsageSource = Literal["reported", "counted", "estimated"]
MILLION = Decimal(1_000_000)
#: The dearest price a model may have, in USD per million tokens (a dollar a token): above
#: it a worst case no longer fits the budget stores' 64-bit nano-dollar counts.
MAX_PRICE = MILLION
#: The largest ceiling a requirement takes (leave it unset for none): a bigger one is a typo.
MAX_CEILING = 10**15
#: The most tokens one attempt's usage may count in any field: 2**31 - 1, far above any
#: context window (the largest are about 10**7) and small enough that no price makes its cost
#: absurd. A provider reporting more (or a negative, fractional or boolean count) sent a
#: malformed answer: :class:`Usage` raises :class:`MalformedResponse`.
MAX_USAGE_TOKENS = 2**31 - 1
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
_USAGE_SOURCES = frozenset({"reported", "counted", "estimated"})


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


def _items(value: Any, field: str) -> tuple[Any, ...]:
    """``value`` as a tuple; a string, a mapping or a scalar where a list belongs is refused
    (iterating would split a string into characters)."""
    if type(value) is tuple:
        return value
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidRequest(f"expected a list, got {type(value).__name__}", field=field)
    return tuple(value)


def _messages(value: Any) -> tuple[Any, ...]:
    return _items(value, "messages")


def _stop(value: Any) -> tuple[Any, ...]:
    return (value,) if isinstance(value, str) else _items(value, "stop")  # one string: one stop


def _tools(value: Any) -> tuple[Any, ...]:
    return _items(value, "tools")


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


def _check_json(value: Any, field: str) -> None:
    """JSON-serialisable as it will be sent (the only form a provider can use)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as e:
        raise InvalidRequest(f"is not JSON-serialisable ({type(e).__name__}: {e})"[:200], field=field) from None


def _decimal_or_none(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value  # a bool is refused by the field's validator, which names the field
    if isinstance(value, float):
        value = repr(value)  # 0.1 -> Decimal("0.1"), not 0.1000000000000000055...
    try:
        return Decimal(value)
    except (ArithmeticError, TypeError, ValueError):
        return value  # refused by the validator, naming the field


def _check_money(instance: Any, attribute: attrs.Attribute[Any], value: Decimal | None) -> None:
    if value is None:
        return
    if not isinstance(value, Decimal):
        raise InvalidRequest(f"expected an amount, got {value!r}"[:200], field=attribute.name)
    if not value.is_finite() or value < 0:
        raise InvalidRequest(f"must be a finite amount >= 0, got {value}", field=attribute.name)
    if value > MAX_PRICE:
        raise InvalidRequest(f"must be at most {MAX_PRICE:,} USD per million tokens, got {value:.6g}",
                             field=attribute.name)


@attrs.frozen
class ToolCall:
    """A function call a model asked for. ``arguments`` is the JSON text the model produced,
    kept as is: it is not parsed or validated (models do produce invalid JSON)."""

    id: str
    name: str
    arguments: str


@attrs.frozen
class ToolCallDelta:
    """A piece of a streamed tool call. Pieces with the same ``index`` make one call: ``id`` and
    ``name`` come once (the first non-empty value is kept), ``arguments_fragment`` pieces are
    joined in order. :class:`~squirrel_models.ResponseStream` assembles them into
    :class:`ToolCall` objects (``response.tool_calls``)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments_fragment: str = ""

    @classmethod
    def from_call(cls, index: int, call: ToolCall) -> ToolCallDelta:
        """A whole call as one delta (for a provider that gets complete calls)."""
        return cls(index, call.id, call.name, call.arguments)


def assemble_tool_calls(deltas: Iterable[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """Complete calls from streamed pieces, ordered by ``index``. A call whose ``id`` or
    ``name`` never came gets ``""`` for it (some servers send no ids)."""
    parts: dict[int, list[Any]] = {}
    for d in deltas:
        p = parts.get(d.index)
        if p is None:
            p = parts[d.index] = [d.id, d.name, []]
        else:
            p[0] = p[0] or d.id
            p[1] = p[1] or d.name
        if d.arguments_fragment:
            p[2].append(d.arguments_fragment)
    return tuple(ToolCall(p[0] or "", p[1] or "", "".join(p[2])) for _, p in sorted(parts.items()))


_DETAILS = frozenset({"auto", "low", "high"})
#: An image given inline: ``data:image/<type>;base64,<data>``.
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.*)", re.S)
#: A prompt allowance per image: no tokenizer makes images text, and providers charge them by
#: their own rules (OpenAI: at most 1,445 tokens for a high-detail image after its resizing;
#: others fewer). An upper bound on what one image adds to a prompt, for estimates.
IMAGE_TOKENS = 2048


@attrs.frozen
class TextPart:
    """Text in a message made of parts (see :class:`Message`)."""

    text: str


@attrs.frozen
class ImagePart:
    """An image in a message: an ``http(s)`` URL the provider fetches, or a base64 data URL
    (``data:image/png;base64,...``; :meth:`from_bytes` builds one). ``detail`` (``auto``,
    ``low``, ``high``) is OpenAI's resolution hint. Only models with the ``vision``
    capability take images: a request carrying one is routed to those alone."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str = "image/png",
                   detail: Literal["auto", "low", "high"] | None = None) -> ImagePart:
        """An image given inline, as a base64 data URL."""
        return cls(f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}", detail)

    @property
    def media_type(self) -> str | None:
        """The image type of a data URL (``image/png``); None for a URL to fetch."""
        m = _DATA_URL.match(self.url)
        return m.group(1) if m else None

    def data(self) -> bytes | None:
        """The bytes of a data URL's image; None for a URL to fetch."""
        m = _DATA_URL.match(self.url)
        return base64.b64decode(m.group(2)) if m else None


ContentPart = TextPart | ImagePart


def _check_image(part: ImagePart, field: str) -> None:
    url = part.url
    _check_text(url, f"{field}.url")
    if part.detail is not None and part.detail not in _DETAILS:
        raise InvalidRequest(f"must be 'auto', 'low', 'high' or None, got {part.detail!r}"[:200],
                             field=f"{field}.detail")
    if url.startswith("data:"):
        m = _DATA_URL.match(url)
        if m is None:
            raise InvalidRequest("a data URL must read data:image/<type>;base64,<data>",
                                 field=f"{field}.url")
        try:
            raw = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("the data URL's data is not valid base64", field=f"{field}.url") from None
        if not raw:
            raise InvalidRequest("the data URL holds no data", field=f"{field}.url")
        return
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#" \
            or any(c.isspace() for c in url):
        raise InvalidRequest(f"must be an http(s) URL or a data:image/...;base64 URL, got "
                             f"{url[:40]!r}", field=f"{field}.url")


def _content(value: Any) -> Any:
    """A message's content: a str, or its parts as a tuple (a list is hashable once a tuple;
    an OpenAI-format part mapping becomes a :class:`TextPart` or :class:`ImagePart`)."""
    if isinstance(value, str) or value is None or isinstance(value, bytes | bytearray | Mapping) \
            or not isinstance(value, Iterable):
        return value  # refused by _check_message, naming the field
    return tuple(_part(p) for p in value)


def _part(p: Any) -> Any:
    if not isinstance(p, Mapping):
        return p
    kind = p.get("type")
    if kind == "text" and set(p) <= {"type", "text"}:
        return TextPart(p.get("text"))  # type: ignore[arg-type]
    if kind == "image_url" and set(p) <= {"type", "image_url"}:
        img = p.get("image_url")
        if isinstance(img, str):
            return ImagePart(img)
        if isinstance(img, Mapping) and set(img) <= {"url", "detail"}:
            return ImagePart(img.get("url"), img.get("detail"))  # type: ignore[arg-type]
    return p  # refused by _check_message, naming the part


@attrs.frozen
class Message:
    """One chat message. ``name`` and ``tool_call_id`` follow the OpenAI chat format.

    An assistant message that called tools carries its ``tool_calls`` (``content`` may be
    empty); each answer goes back as a ``tool`` message whose ``tool_call_id`` names the call.

    ``content`` is text, or a sequence of parts (:class:`TextPart`, :class:`ImagePart`, or
    their OpenAI-format mappings) for a message with images; :attr:`text` is its text either
    way.
    """

    role: Role
    content: str | tuple[ContentPart, ...]
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def __attrs_post_init__(self) -> None:
        # Checked here, not by a converter and validator, so plain messages cost nothing more.
        if type(self.content) is not str:
            object.__setattr__(self, "content", _content(self.content))
        if self.tool_calls:
            calls = tuple(self.tool_calls)
            for i, c in enumerate(calls):
                if not isinstance(c, ToolCall):
                    raise InvalidRequest(f"expected a ToolCall, got {type(c).__name__}", field=f"tool_calls[{i}]")
            object.__setattr__(self, "tool_calls", calls)

    @property
    def text(self) -> str:
        """The message's text: its content, or the text of its parts joined."""
        c = self.content
        if type(c) is str:
            return c
        return "".join(p.text for p in c if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """The images among the message's parts."""
        c = self.content
        if type(c) is str:
            return ()
        return tuple(p for p in c if isinstance(p, ImagePart))

    @classmethod
    def user(cls, content: str | Iterable[ContentPart | str]) -> Message:
        """A user message: text, or parts (a plain string among them is a :class:`TextPart`)."""
        if isinstance(content, str):
            return cls("user", content)
        return cls("user", tuple(TextPart(p) if isinstance(p, str) else p for p in content))

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def assistant(cls, content: str = "", tool_calls: Iterable[ToolCall] = ()) -> Message:
        """What a model said, with the tool calls it made (``response.tool_calls``)."""
        return cls("assistant", content, tool_calls=tuple(tool_calls))

    @classmethod
    def tool(cls, content: str, tool_call_id: str) -> Message:
        """The result of the tool call ``tool_call_id``."""
        return cls("tool", content, tool_call_id=tool_call_id)


def _check_message(m: Message, where: str) -> None:
    """Every field of a message is what the wire format takes (the message itself checks
    nothing, so building one costs nothing; a request checks each of its messages)."""
    content = m.content
    if (type(content) is str and content.isascii() and m.name is None and m.tool_call_id is None
            and not m.tool_calls and type(m.role) is str and m.role in _ROLES):
        return  # the common message: plain ASCII text and a role, nothing else to check
    if not isinstance(m.role, str) or m.role not in _ROLES:
        raise InvalidRequest(f"must be one of system, user, assistant, tool, got {shown(m.role)}",
                             field=f"{where}.role")
    if type(m.content) is str:
        _check_text(m.content, f"{where}.content")
    elif not isinstance(m.content, tuple):
        raise InvalidRequest(f"expected a string or a list of parts, got {type(m.content).__name__}",
                             field=f"{where}.content")
    else:
        if m.role != "user" and any(not isinstance(p, TextPart) for p in m.content):
            raise InvalidRequest(f"only user messages take images, not {m.role} messages",
                                 field=f"{where}.content")
        for j, p in enumerate(m.content):
            if isinstance(p, TextPart):
                _check_text(p.text, f"{where}.content[{j}].text")
            elif isinstance(p, ImagePart):
                _check_image(p, f"{where}.content[{j}].image_url")
            else:
                raise InvalidRequest("expected a TextPart, an ImagePart or an OpenAI text or "
                                     f"image_url part, got {p!r}"[:200], field=f"{where}.content[{j}]")
    _check_text(m.name, f"{where}.name", optional=True)
    _check_text(m.tool_call_id, f"{where}.tool_call_id", optional=True)
    for j, c in enumerate(m.tool_calls):
        _check_text(c.id, f"{where}.tool_calls[{j}].id")
        _check_text(c.name, f"{where}.tool_calls[{j}].name")
        _check_text(c.arguments, f"{where}.tool_calls[{j}].arguments")


_FORMATS = ("text", "json_object", "json_schema")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@attrs.frozen
class ResponseFormat:
    """The shape the answer must take: ``text`` (no constraint), ``json_object`` (JSON mode:
    some JSON object) or ``json_schema`` (JSON that validates against ``schema``; ``name`` is
    the schema's name, ``strict`` OpenAI's strict flag).

    A request with JSON mode goes only to models with the ``json_mode`` feature, one with a
    schema only to models with ``json_schema`` (see ``AIRequest.needs``). Build one with
    :meth:`json`, :meth:`json_schema` or :meth:`from_openai`; ``AIRequest`` also takes the
    OpenAI mapping (``{"type": "json_object"}``) as its ``response_format``.
    """

    type: Literal["text", "json_object", "json_schema"]
    schema: Mapping[str, Any] | None = attrs.field(default=None, eq=False, hash=False)
    name: str = "response"
    strict: bool | None = None
    #: The schema as canonical JSON text: what equality and hashing use (a mapping is neither).
    _key: str = attrs.field(init=False, default="", repr=False)

    def __attrs_post_init__(self) -> None:
        if self.type not in _FORMATS:
            raise InvalidRequest(f"must be text, json_object or json_schema, got {self.type!r}"[:200],
                                 field="response_format.type")
        if self.type != "json_schema":
            if self.schema is not None:
                raise InvalidRequest(f"a schema goes with type json_schema, not {self.type}",
                                     field="response_format.schema")
            if self.strict is not None:
                raise InvalidRequest(f"strict goes with type json_schema, not {self.type}",
                                     field="response_format.strict")
            return
        if not isinstance(self.schema, Mapping):
            raise InvalidRequest(f"expected a JSON schema (a mapping), got {type(self.schema).__name__}",
                                 field="response_format.schema")
        _check_json(self.schema, "response_format.schema")
        if not isinstance(self.name, str) or not _SCHEMA_NAME.fullmatch(self.name):
            raise InvalidRequest(f"must be 1..64 letters, digits, _ or -, got {self.name!r}"[:200],
                                 field="response_format.name")
        if self.strict is not None and not isinstance(self.strict, bool):
            raise InvalidRequest(f"expected true, false or None, got {self.strict!r}"[:200],
                                 field="response_format.strict")
        object.__setattr__(self, "_key", json.dumps(self.schema, sort_keys=True, ensure_ascii=False))

    @classmethod
    def text(cls) -> ResponseFormat:
        return cls("text")

    @classmethod
    def json(cls) -> ResponseFormat:
        """JSON mode: the answer is a JSON object (of no particular schema)."""
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any], name: str = "response",
                    strict: bool | None = None) -> ResponseFormat:
        """The answer is JSON valid against ``schema``."""
        return cls("json_schema", schema, name, strict)

    @classmethod
    def from_openai(cls, value: Mapping[str, Any]) -> ResponseFormat:
        """From OpenAI's ``response_format``: ``{"type": "json_object"}`` or ``{"type":
        "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}``. An
        unknown key is refused, naming it."""
        if not isinstance(value, Mapping):
            raise InvalidRequest(f"expected a mapping, got {type(value).__name__}", field="response_format")
        kind = value.get("type")
        allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
        for k in value:
            if k not in allowed:
                raise InvalidRequest(f"unknown key {k!r}"[:200], field=f"response_format.{k}")
        if kind != "json_schema":
            return cls(kind)  # type: ignore[arg-type]
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping):
            raise InvalidRequest(f"expected a mapping, got {type(spec).__name__}",
                                 field="response_format.json_schema")
        for k in spec:
            if k not in ("name", "schema", "strict", "description"):
                raise InvalidRequest(f"unknown key {k!r}"[:200], field=f"response_format.json_schema.{k}")
        return cls("json_schema", spec.get("schema"), spec.get("name", "response"), spec.get("strict"))

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``response_format`` for this format."""
        if self.type != "json_schema":
            return {"type": self.type}
        spec: dict[str, Any] = {"name": self.name, "schema": _plain(self.schema)}
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}

    @property
    def schema_text(self) -> str:
        """The schema as canonical JSON text (keys sorted); ``""`` without one."""
        return self._key

    @property
    def feature(self) -> str | None:
        """The model feature this format needs: ``json_mode``, ``json_schema`` or None."""
        return {"json_object": "json_mode", "json_schema": "json_schema"}.get(self.type)


def _plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists (what a JSON encoder takes)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _response_format(value: Any) -> Any:
    if value is None or isinstance(value, ResponseFormat):
        return value
    if isinstance(value, Mapping):
        return ResponseFormat.from_openai(value)
    if isinstance(value, str) and value in _FORMATS and value != "json_schema":
        return ResponseFormat(value)  # type: ignore[arg-type]
    raise InvalidRequest("expected a ResponseFormat, an OpenAI response_format mapping, 'text' or "
                         f"'json_object', got {value!r}"[:200], field="response_format")


_INT64 = 2**63


@attrs.frozen
class AIRequest:
    """A chat request, provider-neutral.

    ``max_tokens`` bounds the output and so the worst-case cost; when None the model's own
    output limit is used. ``budget_key`` names a caller-supplied budget scope (a user, a team).
    ``tools`` are OpenAI-format tool definitions, passed through to providers that take them;
    ``tool_choice`` (``"auto"``, ``"none"``, ``"required"`` or an OpenAI-format mapping naming
    one function) goes with them. A model's calls come back in ``AIResponse.tool_calls``.

    Sampling and shape (sent to providers that take them; one that cannot honour a field set
    here refuses the request, and the next candidate is tried): ``top_p`` (0..1), ``seed``
    (an int, for reproducible sampling where the model supports it), ``stop`` (a string or a
    list), ``n`` (how many answers, 1..128: the budget reserves ``n`` times the output cap,
    the usage and cost are of all of them, ``AIResponse.choices`` holds each; streams take
    ``n = 1``), ``user`` (an end-user id passed upstream for abuse monitoring) and
    ``response_format`` (:class:`ResponseFormat`, or its OpenAI mapping).

    :attr:`needs` is what the request itself requires of a model (``vision`` for images,
    ``json_mode``/``json_schema`` for a response format): the manager adds it to the
    requirements, so selection leaves out the models that lack it, saying why.

    ``extra`` holds OpenAI-format fields passed through as they are (``AIRequest.from_openai(
    body, passthrough=[...])``): sent by providers that speak OpenAI's format, refused (so the
    next candidate is tried) by the others.
    """

    messages: tuple[Message, ...] = attrs.field(converter=_messages)
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = attrs.field(default=(), converter=_stop)
    tools: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=_tools)
    budget_key: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = attrs.field(default=None, converter=_response_format)
    top_p: float | None = None
    seed: int | None = None
    n: int = 1
    user: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    #: (capabilities, features) the request needs of a model; computed once, see ``needs``.
    _needs: tuple[frozenset[str], frozenset[str]] = attrs.field(
        init=False, default=(frozenset(), frozenset()), eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("a request needs at least one message", field="messages")
        images = False
        for i, m in enumerate(self.messages):
            if not isinstance(m, Message):
                raise InvalidRequest(f"expected a Message, got {type(m).__name__}",
                                     field=f"messages[{i}]")
            _check_message(m, f"messages[{i}]")
            images = images or (type(m.content) is not str and bool(m.images))
        if self.max_tokens is not None and not (
            type(self.max_tokens) is int and 0 < self.max_tokens <= 10_000_000
        ):
            raise InvalidRequest(f"must be an int in 1..10,000,000, got {shown(self.max_tokens)}",
                                 field="max_tokens")
        if self.temperature is not None and not _number_in(self.temperature, 0, 2):
            raise InvalidRequest(f"must be a number in 0..2, got {shown(self.temperature)}",
                                 field="temperature")
        for i, text in enumerate(self.stop):
            _check_text(text, f"stop[{i}]")
        for i, tool in enumerate(self.tools):
            if not isinstance(tool, Mapping):
                raise InvalidRequest(f"expected a mapping, got {type(tool).__name__}", field=f"tools[{i}]")
        if self.tools:
            _check_json(list(self.tools), "tools")
        if self.tool_choice is not None:
            if isinstance(self.tool_choice, Mapping):
                _check_json(self.tool_choice, "tool_choice")
            elif not (isinstance(self.tool_choice, str) and self.tool_choice in _TOOL_CHOICES):
                raise InvalidRequest("must be 'auto', 'none', 'required' or a mapping, got "
                                     f"{shown(self.tool_choice)}", field="tool_choice")
        if self.budget_key is not None:
            _check_text(self.budget_key, "budget_key")
            if not self.budget_key:
                raise InvalidRequest("must be a non-empty string or None", field="budget_key")
        if not isinstance(self.metadata, Mapping):
            raise InvalidRequest(f"expected a mapping, got {type(self.metadata).__name__}", field="metadata")
        for k, v in self.metadata.items():
            _check_text(k, "metadata")
            _check_text(v, f"metadata.{k}")
        if self.extra:
            if not isinstance(self.extra, Mapping):
                raise InvalidRequest(f"expected a mapping, got {type(self.extra).__name__}", field="extra")
            for k in self.extra:
                _check_text(k, "extra")
            _check_json(dict(self.extra), "extra")
        self._check_sampling()
        feature = self.response_format.feature if self.response_format is not None else None
        if images or feature:
            object.__setattr__(self, "_needs", (frozenset({"vision"} if images else ()),
                                                frozenset({feature} if feature else ())))

    def _check_sampling(self) -> None:
        if self.top_p is not None and not _number_in(self.top_p, 0, 1):
            raise InvalidRequest(f"must be a number in 0..1, got {shown(self.top_p)}", field="top_p")
        if self.seed is not None and not (type(self.seed) is int and -_INT64 <= self.seed < _INT64):
            raise InvalidRequest(f"must be an int in -2**63..2**63-1, got {shown(self.seed)}", field="seed")
        if not (type(self.n) is int and 1 <= self.n <= 128):
            raise InvalidRequest(f"must be an int in 1..128, got {shown(self.n)}", field="n")
        if self.user is not None:
            _check_text(self.user, "user")
            if not self.user or len(self.user) > 256:
                raise InvalidRequest("must be 1..256 characters or None", field="user")

    @property
    def needs(self) -> tuple[frozenset[str], frozenset[str]]:
        """(capabilities, features) this request needs of any model that answers it:
        ``vision`` when a message has an image; ``json_mode`` or ``json_schema`` for its
        ``response_format``. The manager adds them to the requirements of selection."""
        return self._needs

    @property
    def images(self) -> bool:
        """Whether any message carries an image."""
        return "vision" in self._needs[0]

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kw: Any) -> AIRequest:
        """A single-turn request; ``kw`` are the other fields (``max_tokens``, ...)."""
        messages = ([Message.system(system)] if system else []) + [Message.user(prompt)]
        return cls(messages=tuple(messages), **kw)

    def text(self) -> str:
        """All message texts joined: what a byte-level upper bound is computed on."""
        return "\n".join(m.text for m in self.messages)

    @classmethod
    def from_openai(cls, body: Mapping[str, Any], *, passthrough: Iterable[str] = (),
                    budget_key: str | None = None) -> AIRequest:
        """The request of an OpenAI chat-completions body (see
        :mod:`squirrel_models.openai_format`): unknown fields are refused by name
        (:class:`InvalidRequest`) unless named in ``passthrough``, which sends them upstream as
        they are (:attr:`extra`)."""
        from .openai_format import request_from_openai

        return request_from_openai(body, passthrough=tuple(passthrough), budget_key=budget_key)

    def to_openai(self, model: str | None = None) -> dict[str, Any]:
        """This request as an OpenAI chat-completions body (``budget_key`` has no counterpart)."""
        from .openai_format import request_to_openai

        return request_to_openai(self, model)


@attrs.frozen
class TokenCount:
    """A token count and whether it is exact (from the model's tokenizer) or an upper bound."""

    tokens: int
    exact: bool
    method: str = ""

    def __str__(self) -> str:
        return f"{self.tokens}" if self.exact else f"<= {self.tokens}"


@attrs.frozen
class Usage:
    """Tokens an attempt used.

    ``input_tokens`` includes ``cached_tokens``; ``output_tokens`` includes
    ``reasoning_tokens`` (the OpenAI convention), so cost never double counts them.
    ``source`` says where the numbers come from: ``reported`` by the provider, ``counted`` by
    the plugin with the model's tokenizer, or ``estimated`` (an upper bound).

    Usage mostly comes from upstream answers, so it is validated where it is made: every
    count is an int (not a bool) in ``0..MAX_USAGE_TOKENS``, else :class:`MalformedResponse`
    (a :class:`ModelError`: the attempt failed and the fallback chain decides what follows).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "reported"

    def __attrs_post_init__(self) -> None:
        for name in _USAGE_FIELDS:
            n = getattr(self, name)
            if (isinstance(n, bool) or not isinstance(n, int)
                    or not 0 <= n <= MAX_USAGE_TOKENS):
                raise MalformedResponse(
                    f"usage.{name} must be a whole number of tokens in "
                    f"0..{MAX_USAGE_TOKENS}, got {n!r:.40}")
        if self.source not in _USAGE_SOURCES:
            raise MalformedResponse(f"usage.source must be reported, counted or estimated, "
                                    f"got {self.source!r:.40}")

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        order = ("reported", "counted", "estimated")
        worst = max(self.source, other.source, key=order.index)
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            worst,
        )


@attrs.frozen
class Price:
    """USD per million tokens. ``cached_input`` defaults to the input price.

    An explicit price of 0 (a local model) is honoured; an unknown price is ``None`` on the
    model card, never a ``Price`` of zeros.
    """

    input: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    output: Decimal = attrs.field(converter=_decimal_or_none, validator=_check_money)
    cached_input: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_money
    )

    @classmethod
    def free(cls) -> Price:
        return cls(Decimal(0), Decimal(0))

    def cost(self, usage: Usage) -> Decimal:
        """Cost of ``usage`` in USD, exact (no float rounding)."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return (
            (usage.input_tokens - cached) * self.input
            + cached * cached_rate
            + usage.output_tokens * self.output
        ) / MILLION

    @property
    def per_1k_max(self) -> Decimal:
        """The dearer of input and output, per 1,000 tokens: what ceilings compare against."""
        return max(self.input, self.output) / 1000


@attrs.frozen
class ModelCard:
    """What a model can do and costs. ``id`` is ``"<provider>/<model>"`` and unique.

    ``capabilities`` are task kinds (``chat``, ``completion``, ``vision``, ``embedding``);
    ``features`` are API features (``tools``, ``json_mode``, ``streaming``, ``system_prompt``).
    ``price`` None means unknown. ``quality`` is a prior in [0, 1] (None: no opinion);
    ``latency_ms`` a prior used until latency is observed.
    """

    id: str
    provider: str
    model: str
    provider_type: str = ""
    capabilities: frozenset[str] = attrs.field(
        default=frozenset({"chat"}), converter=_frozenset, validator=_check_names)
    features: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)
    context_window: int = 4096
    max_output_tokens: int | None = None
    price: Price | None = None
    quality: float | None = None
    latency_ms: float | None = None
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.context_window <= 0:
            raise InvalidRequest(f"must be > 0, got {self.context_window}", field="context_window")
        if self.quality is not None and not 0 <= self.quality <= 1:
            raise InvalidRequest(f"must be in [0, 1], got {self.quality}", field="quality")

    @classmethod
    def for_provider(cls, provider: str, model: str, **kw: Any) -> ModelCard:
        return cls(id=f"{provider}/{model}", provider=provider, model=model, **kw)

    @property
    def output_limit(self) -> int:
        return self.max_output_tokens or self.context_window


def _check_ceiling(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Decimal):
        ok = value.is_finite() and value >= 0
    else:
        ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
              and value >= 0)
    if not ok:
        raise InvalidRequest(f"must be a finite number >= 0, got {value!r}"[:200], field=attribute.name)
    if value > MAX_CEILING:
        raise InvalidRequest(f"must be at most {MAX_CEILING:.0e} (leave it unset for no ceiling), got "
                             f"{value:.6g}", field=attribute.name)


@attrs.frozen
class ModelRequirements:
    """What a request needs of a model. Every field is a hard filter except ``prefer_tags``.

    ``max_cost_per_1k_tokens`` compares with the dearer of a model's input and output price;
    ``max_request_cost`` is a per-request ceiling on the worst-case cost of one attempt.
    ``providers``/``exclude_providers`` allow and deny provider names; ``models`` pins ids.
    """

    min_capabilities: frozenset[str] = attrs.field(
        default=frozenset({"chat"}), converter=_frozenset, validator=_check_names)
    required_features: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)
    max_latency_ms: float | None = attrs.field(default=None, validator=_check_ceiling)
    max_cost_per_1k_tokens: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_ceiling
    )
    max_request_cost: Decimal | None = attrs.field(
        default=None, converter=_decimal_or_none, validator=_check_ceiling
    )
    min_context_window: int | None = attrs.field(default=None, validator=_check_ceiling)
    providers: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_frozenset), validator=_check_names
    )
    exclude_providers: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)
    models: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_frozenset), validator=_check_names
    )
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)
    prefer_tags: frozenset[str] = attrs.field(default=frozenset(), converter=_frozenset, validator=_check_names)


@attrs.frozen
class StreamChunk:
    """One piece of a streamed answer. The last chunk of a provider stream carries ``usage``.
    ``tool_calls`` are pieces of tool calls (see :class:`ToolCallDelta`)."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    #: What the stream's rate-limit headers said (``squirrel_models.upstream.
    #: parse_rate_limits``); a provider sets it on one chunk, usually the last.
    rate_limits: UpstreamLimits | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Choice:
    """One of the answers to a request with ``n`` > 1 (``index`` 0 is the first)."""

    index: int
    text: str
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@attrs.frozen
class ProviderResponse:
    """What a provider returns for one attempt: text, usage, why generation stopped and the
    tool calls the model made (``finish_reason`` is then usually ``"tool_calls"``).

    For a request with ``n`` > 1, ``choices`` holds every answer (the first is also ``text``,
    ``finish_reason`` and ``tool_calls``) and ``usage`` counts them all."""

    text: str
    usage: Usage
    finish_reason: str | None = None
    raw_model: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    choices: tuple[Choice, ...] = ()
    #: What the answer's rate-limit headers said (``squirrel_models.upstream.
    #: parse_rate_limits``), for the core to respect limits nobody configured.
    rate_limits: UpstreamLimits | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class AttemptRecord:
    """One attempt, for explanations and ledgers: ``ok`` or ``error`` (an upstream call),
    ``refused`` (a budget or ceiling said no before any call), ``skipped`` (breaker open)."""

    number: int
    model_id: str
    provider: str
    outcome: Literal["ok", "error", "refused", "skipped"]
    error: BaseException | None = attrs.field(default=None, eq=False)
    usage: Usage | None = None
    cost: Decimal | None = None
    latency_s: float = 0.0
    note: str = ""


@attrs.frozen
class AIResponse:
    """The answer to a request: what was said, by which model, for how much and why.

    ``cost`` is None only when the model is unpriced and that was explicitly allowed.
    ``decision`` is the selection record; ``attempts`` every upstream attempt in order.
    ``tool_calls`` are the function calls the model asked for (``text`` may then be empty);
    send them back with ``Message.assistant(text, tool_calls)`` and one ``Message.tool`` each.
    ``choices`` holds every answer of a request with ``n`` > 1.
    """

    text: str
    model: str
    usage: Usage
    cost: Decimal | None
    decision: Any  # selection.Decision; typed loosely to keep import order simple
    attempts: Sequence[AttemptRecord]
    finish_reason: str | None = None
    request_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    _choices: tuple[Choice, ...] = attrs.field(default=(), alias="choices")

    @property
    def choices(self) -> tuple[Choice, ...]:
        """Every answer: one, or ``n`` for a request with ``n`` > 1 (the first is ``text``,
        ``finish_reason`` and ``tool_calls``). ``usage`` and ``cost`` cover them all."""
        return self._choices or (Choice(0, self.text, self.finish_reason, self.tool_calls),)

    def to_openai(self, *, id: str | None = None, created: int | None = None,
                  model: str | None = None) -> dict[str, Any]:
        """This answer as an OpenAI ``chat.completion`` object (a JSON-ready dict): text, tool
        calls, finish reason and usage; ``id`` defaults to ``chatcmpl-<request_id>``."""
        from .openai_format import response_to_openai

        return response_to_openai(self, id=id, created=created, model=model)
