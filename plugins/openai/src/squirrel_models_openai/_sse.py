"""Server-sent events of a text stream: the event-stream format's parsing rules (WHATWG HTML,
"Interpreting an event stream") for the two fields a chat stream uses, ``event`` and ``data``.

Ours, not ``httpx_sse``'s: its line and event decoders live in a private module. Lines end at
``\\r\\n``, ``\\r`` or ``\\n`` only (the core's :class:`~squirrel_models.eventlines.EventLines`:
not at the other breaks ``str.splitlines`` knows, which JSON text may hold); a line starting
with ``:`` is a comment; one space after the field's colon is dropped; ``data`` lines of one
event are joined with ``\\n``; a blank line ends the event. An event without data is not
dispatched (the format's rule; the provider would skip it anyway). ``id`` and ``retry`` are
read by nobody here, so they are skipped like unknown fields. An event (or a line not yet
ended) past the core's bound on an answer is a ``MalformedResponse``
(:func:`squirrel_models.answersize.check_event_size`): a line without end was kept whole.
"""

from __future__ import annotations

from squirrel_models.answersize import check_event_size
from squirrel_models.eventlines import EventLines

__all__ = ["EventStream"]


class EventStream:
    """Feed it the stream's text as it comes; it returns each finished event as (type, data),
    the type ``"message"`` unless an ``event`` field named another."""

    __slots__ = ("_data", "_event", "_lines", "_size")

    def __init__(self) -> None:
        self._lines = EventLines()  # the format's line endings, within the core's bound
        self._event = ""
        self._data: list[str] = []
        self._size = 0  # the characters of _data

    def feed(self, text: str) -> list[tuple[str, str]]:
        """The events that ``text`` finishes."""
        events: list[tuple[str, str]] = []
        for line in self._lines.feed(text):
            self._line(line, events)
        if self._size:
            check_event_size(self._size + self._lines.pending)
        return events

    def close(self) -> list[tuple[str, str]]:
        """At the end of the stream: the last event, also when its blank line never came."""
        events: list[tuple[str, str]] = []
        rest = self._lines.close()
        if rest:
            self._line(rest, events)
        self._line("", events)
        return events

    def _line(self, line: str, events: list[tuple[str, str]]) -> None:
        if not line:
            if self._data:
                events.append((self._event or "message", "\n".join(self._data)))
                self._data = []
                self._size = 0
            self._event = ""
            return
        if line[0] == ":":
            return
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._size += len(value) + 1
            check_event_size(self._size)
            self._data.append(value)
        elif field == "event":
            self._event = value
