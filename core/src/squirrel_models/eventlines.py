"""The lines of a server-sent event stream, as its text arrives in pieces.

Lines end at ``\\r\\n``, ``\\r`` or ``\\n`` only (the format's rule, WHATWG HTML "Interpreting an
event stream"), not at the other breaks ``str.splitlines`` knows (U+2028, U+0085...), which
JSON text may hold raw; httpx's ``aiter_lines`` ends lines at those too, cutting an event in
two. A line not ended yet is kept in pieces (joined once it ends: a long line in many small
pieces is not copied whole at each) and within the core's bound on an answer
(:func:`squirrel_models.answersize.check_event_size`). Used by :func:`squirrel_models.simple.
sse_json` and the openai plugin's event decoder.
"""

from __future__ import annotations

from .answersize import check_event_size

__all__ = ["EventLines"]


class EventLines:
    """Feed it the stream's text as it comes; it returns the lines each piece ends."""

    __slots__ = ("_cr", "_rest", "_size")

    def __init__(self) -> None:
        self._rest: list[str] = []  # the start of a line not ended yet, in pieces
        self._size = 0  # its characters
        self._cr = False  # the last piece ended in "\r": a "\n" opening the next one ends no line

    @property
    def pending(self) -> int:
        """The characters of the line not ended yet."""
        return self._size

    def feed(self, text: str) -> list[str]:
        """The lines ``text`` ends (without their line endings)."""
        if self._cr:
            self._cr = False
            if text[:1] == "\n":
                text = text[1:]
        if "\r" in text:
            self._cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            if text:
                self._rest.append(text)
                self._size += len(text)
                check_event_size(self._size)
            return []
        lines = text.split("\n")
        if self._rest:
            lines[0] = "".join(self._rest) + lines[0]
        last = lines.pop()
        self._rest, self._size = ([last], len(last)) if last else ([], 0)
        check_event_size(self._size)
        return lines

    def close(self) -> str:
        """At the end of the stream: the last line when its line ending never came, else ''."""
        rest = "".join(self._rest)
        self._rest, self._size = [], 0
        return rest
