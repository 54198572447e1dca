"""The prompt's upper bound is one: no byte-level tokenizer makes more tokens of a request than
it says, whatever the request sends (a message's ``name`` and a tool message's
``tool_call_id`` included), and the routing's quick bound agrees with the full one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, InvalidRequest, Message
from squirrel_models.tokens import prompt_bounds, upper_bound

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


def _sent_bytes(request: AIRequest) -> int:
    """The UTF-8 bytes of every text a message carries upstream: at most one token each for a
    byte-level tokenizer."""
    return sum(len(m.text.encode()) + len((m.name or "").encode()) + len((m.tool_call_id or "").encode())
               for m in request.messages)


MESSAGE = st.one_of(
    st.builds(lambda c, n: Message("user", c, name=n), TEXT, st.none() | TEXT.filter(bool)),
    st.builds(lambda c, n: Message("assistant", c, name=n), TEXT, st.none() | TEXT.filter(bool)),
    st.builds(lambda c, i: Message("tool", c, tool_call_id=i), TEXT, TEXT.filter(bool)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=5))
def test_the_upper_bound_covers_every_text_sent(messages: list[Message]) -> None:
    """Before: a message's ``name`` and ``tool_call_id`` counted nothing (a 300-character name
    bounded at 26 tokens), so the 'upper bound' reserved less than the provider could bill."""
    try:
        request = AIRequest(messages=messages)
    except InvalidRequest:  # a message this request cannot carry
        return
    bound = upper_bound(request).tokens
    assert bound >= _sent_bytes(request)
    assert prompt_bounds(request)[0] == bound


@pytest.mark.parametrize("message", [Message("user", "hi", name="n" * 300),
                                     Message("tool", "ok", tool_call_id="call_" + "x" * 200)], ids=["name", "call-id"])
def test_a_long_label_is_in_the_bound(message: Message) -> None:
    request = AIRequest(messages=[Message("user", "hello"), message])
    assert upper_bound(request).tokens >= _sent_bytes(request)
    assert prompt_bounds(request)[0] >= _sent_bytes(request)
