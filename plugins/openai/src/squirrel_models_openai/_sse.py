"""Server-sent events of a text stream: the event-stream format's parsing rules (WHATWG HTML,
"Interpreting an event stream") for the two fields a chat stream uses, ``event`` and ``data``.

Ours, not ``httpx_sse``'s: its line and event decoders live in a private module. Lines end at
``\\r\\n``, ``\\r`` or ``\\n`` only (not at the other breaks ``str.splitlines`` knows, which JSON
text may hold); a line starting with ``:`` is a comment; one space after the field's colon is
dropped; ``data`` lines of one event are joined with ``\\n``; a blank line ends the event. An
event without data is not dispatched (the format's rule; the provider would skip it anyway).
``id`` and ``retry`` are read by nobody here, so they are skipped like unknown fields.
"""

from __future__ import annotations

__all__ = ["EventStream"]


class EventStream:
    """Feed it the stream's text as it comes; it returns each finished event as (type, data),
    the type ``"message"`` unless an ``event`` field named another."""

    __slots__ = ("_cr", "_data", "_event", "_rest")

    def __init__(self) -> None:
        self._rest = ""  # the start of a line whose end has not come yet
        self._cr = False  # the last text ended in "\r": a "\n" opening the next one ends no line
        self._event = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[tuple[str, str]]:
        """The events that ``text`` finishes."""
        if self._cr:
            self._cr = False
            if text[:1] == "\n":
                text = text[1:]
        if "\r" in text:
            self._cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            self._rest += text
            return []
        lines = text.split("\n")
        if self._rest:
            lines[0] = self._rest + lines[0]
        self._rest = lines.pop()
        events: list[tuple[str, str]] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[tuple[str, str]]:
        """At the end of the stream: the last event, also when its blank line never came."""
        events: list[tuple[str, str]] = []
        rest, self._rest = self._rest, ""
        if rest:
            self._line(rest, events)
        self._line("", events)
        return events

    def _line(self, line: str, events: list[tuple[str, str]]) -> None:
        if not line:
            if self._data:
                events.append((self._event or "message", "\n".join(self._data)))
                self._data = []
            self._event = ""
            return
        if line[0] == ":":
            return
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
