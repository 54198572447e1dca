"""The request: :class:`AIRequest` (messages and every sampling and shape field) and its
:class:`ResponseFormat`."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

from .errors import InvalidRequest, shown
from .fieldchecks import _check_json, _check_text, _items, _number_in, budget_key_problem
from .messages import _ROLES, Message, _check_message
from .trusted import slot_init

__all__ = ["AIRequest", "ResponseFormat", "ToolChoice"]

ToolChoice = str | Mapping[str, Any]
_TOOL_CHOICES = frozenset({"none", "auto", "required"})


def _messages(value: Any) -> tuple[Any, ...]:
    return _items(value, "messages")


def _stop(value: Any) -> tuple[Any, ...]:
    return (value,) if isinstance(value, str) else _items(value, "stop")  # one string: one stop


def _tools(value: Any) -> tuple[Any, ...]:
    return _items(value, "tools")


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


@functools.cache
def _request_from_openai() -> Callable[..., AIRequest]:
    # Imported on first use (openai_format imports this module), then kept: an import
    # statement run on every call costs about 0.8 us, as much as building a message.
    from .openai_format import request_from_openai

    return request_from_openai


@slot_init
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
    next candidate is tried) by the others. A field the request reads itself (``n``,
    ``max_tokens``, ``max_completion_tokens``, ``stream``, ``tools``, one of its own fields...)
    is refused there (``extra.n``): it would change what the budget reserved for; so is one
    billed beyond the configured prices (``service_tier``, ``best_of``, ``audio``...:
    :data:`~squirrel_models.openai_format.COST_CHANGING`).
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
    #: The messages' UTF-8 bytes when every one is plain ASCII text (len is the byte
    #: count), measured by the validation's own pass; None otherwise. See
    #: ``tokens.prompt_bounds``: every routed request reads it.
    _ascii_bytes: int | None = attrs.field(init=False, default=None, eq=False, hash=False,
                                           repr=False)

    def __attrs_post_init__(self) -> None:
        # One pass for the usual request (plain ASCII messages, a max_tokens, nothing else
        # set); anything else gets every check, naming the field.
        if not self.messages:
            raise InvalidRequest("a request needs at least one message", field="messages")
        images = False
        ascii_bytes: int | None = 0
        for i, m in enumerate(self.messages):
            if (type(m) is Message and type(c := m.content) is str and c.isascii()
                    and type(r := m.role) is str and r in _ROLES and m.name is None
                    and m.tool_call_id is None and not m.tool_calls):
                if ascii_bytes is not None:
                    ascii_bytes += len(c)
                continue
            ascii_bytes = None
            if not isinstance(m, Message):
                raise InvalidRequest(f"expected a Message, got {type(m).__name__}",
                                     field=f"messages[{i}]")
            _check_message(m, f"messages[{i}]")
            images = images or (type(m.content) is not str and bool(m.images))
        mt = self.max_tokens
        if mt is not None and not (type(mt) is int and 0 < mt <= 10_000_000):
            raise InvalidRequest(f"must be an int in 1..10,000,000, got {shown(mt)}",
                                 field="max_tokens")
        md, n = self.metadata, self.n
        if (self.temperature is not None or self.stop or self.tools or self.tool_choice is not None
                or self.budget_key is not None or type(md) is not dict or md or self.extra
                or self.top_p is not None or self.seed is not None or type(n) is not int or n != 1
                or self.user is not None or self.response_format is not None):
            self._check_options()
        if ascii_bytes is not None:
            object.__setattr__(self, "_ascii_bytes", ascii_bytes)
        feature = self.response_format.feature if self.response_format is not None else None
        if images or feature:
            object.__setattr__(self, "_needs", (frozenset({"vision"} if images else ()),
                                                frozenset({feature} if feature else ())))

    def _check_options(self) -> None:
        """Every field but the messages and ``max_tokens``."""
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
            if (why := budget_key_problem(self.budget_key)) is not None:
                raise InvalidRequest(f"{why} (or None)", field="budget_key")
        if not isinstance(self.metadata, Mapping):
            raise InvalidRequest(f"expected a mapping, got {type(self.metadata).__name__}", field="metadata")
        for k, v in self.metadata.items():
            _check_text(k, "metadata")
            _check_text(v, f"metadata.{k}")
        if self.extra:
            if not isinstance(self.extra, Mapping):
                raise InvalidRequest(f"expected a mapping, got {type(self.extra).__name__}", field="extra")
            from .openai_format import why_not_passable

            for k in self.extra:
                _check_text(k, "extra")
                if (why := why_not_passable(k)) is not None:
                    # Sent over the request's own fields: {"n": 50} asked for 50 answers on
                    # a reservation of one. The gateway's passthrough rule.
                    raise InvalidRequest(f"cannot be passed through: {why}", field=f"extra.{k}")
            _check_json(dict(self.extra), "extra")
        self._check_sampling()

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
        return _request_from_openai()(body, passthrough=tuple(passthrough),
                                      budget_key=budget_key)

    def to_openai(self, model: str | None = None) -> dict[str, Any]:
        """This request as an OpenAI chat-completions body (``budget_key`` has no counterpart)."""
        from .openai_format import request_to_openai

        return request_to_openai(self, model)
