"""Chat messages: text or parts (text, images), and the tool calls a model makes."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from .errors import InvalidRequest, shown
from .fieldchecks import _check_text, _items
from .trusted import slot_init

__all__ = ["IMAGE_TOKENS", "ContentPart", "ImagePart", "Message", "Role", "TextPart", "ToolCall",
           "ToolCallDelta", "assemble_tool_calls"]

Role = Literal["system", "user", "assistant", "tool"]
_ROLES = frozenset({"system", "user", "assistant", "tool"})


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


@slot_init
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
            calls = _items(self.tool_calls, "tool_calls")
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
