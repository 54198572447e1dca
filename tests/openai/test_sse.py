"""The plugin's own event-stream decoder (``_sse.EventStream``) against the format's rules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from squirrel_models_openai._sse import EventStream

STREAM = ("data: {\"a\": 1}\n\n"
          ": a comment\n"
          "event: error\ndata: first\ndata:second\n\n"
          "id: 7\nretry: 10\nunknown: x\ndata:  two spaces\n\n"
          "data\n\n"
          "event: lonely\n\n"
          "data: [DONE]\n\n")
EVENTS = [("message", '{"a": 1}'), ("error", "first\nsecond"), ("message", " two spaces"),
          ("message", ""), ("message", "[DONE]")]


def decode(pieces: list[str]) -> list[tuple[str, str]]:
    events = EventStream()
    out = [e for p in pieces for e in events.feed(p)]
    return out + events.close()


def test_fields_comments_and_blank_lines() -> None:
    assert decode([STREAM]) == EVENTS


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_line_ending_of_the_format(newline: str) -> None:
    assert decode([STREAM.replace("\n", newline)]) == EVENTS


@given(st.lists(st.integers(0, len(STREAM.replace("\n", "\r\n"))), max_size=12),
       st.sampled_from(["\n", "\r\n", "\r"]))
def test_any_split_into_pieces_decodes_the_same(cuts: list[int], newline: str) -> None:
    text = STREAM.replace("\n", newline)
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode(pieces) == EVENTS


def test_only_the_formats_line_breaks_end_lines() -> None:
    """JSON text may hold U+2028, form feeds and the like: they end no line (``splitlines``
    would split there)."""
    data = '{"t": "a\u2028b\x0cc\x1cd\x85e"}'
    assert decode([f"data: {data}\n\n"]) == [("message", data)]


def test_a_last_event_without_its_blank_line_is_kept() -> None:
    assert decode(["data: x\n"]) == [("message", "x")]
    assert decode(["data: x"]) == [("message", "x")]
    assert decode(["data: x\n\n", "event: e\n"]) == [("message", "x")]
