"""The remembered counts of prompt texts (``_count.TextCounts``): the same counts as tiktoken
gives each time, for any text; bounded in texts and characters; right under threads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, Message, ToolCall
from squirrel_models_openai import _count
from squirrel_models_openai._count import TextCounts, count_chat_tokens_detailed
from squirrel_models_openai._tokens import count_request, encoding_for

O200K, CL100K = encoding_for("gpt-4o-mini"), encoding_for("gpt-4")
ENCODINGS = [O200K, CL100K]
ROLES = st.sampled_from(["system", "user", "assistant"])
TEXTS = st.text(max_size=300) | st.sampled_from(["", "user", "You are a helpful assistant.",
                                                 "<|endoftext|> is text here", "  \n\n  "])


class Spy:
    """A real encoding that counts how often it is asked to encode."""

    def __init__(self, encoding: Any) -> None:
        self.encoding, self.calls = encoding, 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return self.encoding.encode_ordinary(text)


def exact(encoding: Any, text: str) -> int:
    return len(encoding.encode_ordinary(text))


@settings(max_examples=200)
@given(st.lists(TEXTS, max_size=12), st.integers(0, 1))
def test_a_remembered_count_is_the_count(texts: list[str], which: int) -> None:
    enc = ENCODINGS[which]
    counts = TextCounts(max_entries=5, max_chars=200, max_text=120)  # small: generations turn over
    for _ in range(2):  # counted, then remembered (or dropped and counted again)
        for t in texts:
            assert counts.count(enc, t) == exact(enc, t)
            assert counts.known(enc).get(t) in (None, exact(enc, t))


@settings(max_examples=150)
@given(st.lists(st.tuples(ROLES, TEXTS, st.none() | st.sampled_from(["ann", "bob"])),
                min_size=1, max_size=6),
       st.sampled_from(["gpt-4o-mini", "gpt-4", "gpt-3.5-turbo-0301", "o3-mini"]))
def test_chat_counts_equal_the_counts_without_memory(messages: list[tuple[str, str, str | None]],
                                                     model: str) -> None:
    dicts = [{"role": r, "content": c} | ({"name": n} if n else {}) for r, c, n in messages]
    enc = encoding_for(model)
    per_message, per_name = _count._message_constants(model)
    expected = 3 + sum(per_message + exact(enc, r) + exact(enc, c) + (exact(enc, n) + per_name if n else 0)
                       for r, c, n in messages)
    for _ in range(2):  # the second time from memory
        got = count_chat_tokens_detailed(enc, dicts, None, model)
        assert got.tokens == max(expected, 0)
        assert got.approximate == (model == "o3-mini")


def test_a_request_counts_the_same_remembered_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    request = AIRequest(messages=(Message("system", "You are terse."), Message("user", "Hi there"),
                                  Message("assistant", "Hello."), Message("user", "Bye", name="ann")))
    first, again = count_request("gpt-4o-mini", request), count_request("gpt-4o-mini", request)
    monkeypatch.setattr(_count, "TEXT_COUNTS", TextCounts(max_text=-1))  # remembers nothing
    uncached = count_request("gpt-4o-mini", request)
    assert first == again == uncached and uncached is not None and uncached.exact


def test_texts_that_repeat_are_encoded_once() -> None:
    spy = Spy(O200K)
    counts = TextCounts()
    for _ in range(50):
        for t in ("system", "user", "You are a helpful assistant for a small bookshop."):
            counts.count(spy, t)
    assert spy.calls == 3


def test_bounded_in_texts_and_characters_and_what_is_used_stays() -> None:
    spy = Spy(O200K)
    counts = TextCounts(max_entries=50, max_chars=2_000, max_text=100)
    system = "You are a helpful assistant."
    for i in range(5_000):
        counts.count(spy, system)
        counts.count(spy, f"a question never asked before, number {i}")
        assert len(counts) <= 2 * 50 and counts.chars <= 2 * 2_000
    # The system prompt moved to each new generation as it came back: encoded once.
    assert spy.calls == 1 + 5_000
    long = "x " * 200
    assert counts.count(spy, long) == exact(O200K, long)
    assert long not in counts.known(spy)  # above max_text: never kept
    assert all(len(t) <= 100 for g in (counts._young, counts._old) for m in g.values() for t in m)


def test_the_process_wide_memory_is_bounded() -> None:
    c = _count.TEXT_COUNTS
    assert c.max_entries * 2 <= 8_192 and c.max_chars * 2 <= 1 << 20 and c.max_text <= c.max_chars


def test_encodings_are_told_apart() -> None:
    text = "  naïve café 東京 🎉" * 3
    assert exact(O200K, text) != exact(CL100K, text)
    counts = TextCounts()
    for _ in range(2):
        assert counts.count(O200K, text) == exact(O200K, text)
        assert counts.count(CL100K, text) == exact(CL100K, text)


def test_threads_count_right_and_the_bounds_hold() -> None:
    counts = TextCounts(max_entries=64, max_chars=4_000, max_text=200)
    texts = [f"text {i} " * (i % 9) for i in range(400)]
    truth = {(e.name, t): exact(e, t) for e in ENCODINGS for t in texts}
    wrong: list[tuple[str, str]] = []

    def work(k: int) -> None:
        for j in range(2_000):
            enc, t = ENCODINGS[(j + k) % 2], texts[(j * 7 + k * 13) % len(texts)]
            known = counts.known(enc).get(t)
            n = counts.count(enc, t) if known is None else known
            if n != truth[(enc.name, t)]:
                wrong.append((enc.name, t))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wrong == []
    assert len(counts) <= 2 * 64 and counts.chars <= 2 * 4_000


def _reference(model: str, request: AIRequest) -> tuple[int, bool]:
    """count_request's figures the long way: the message dicts as sent, counted by
    count_chat_tokens_detailed."""
    from squirrel_models.upstream import message_dict
    from squirrel_models_openai._tokens import base_name

    tools = [dict(t) for t in request.tools] or None
    c = count_chat_tokens_detailed(encoding_for(model), [message_dict(m) for m in request.messages],
                                   tools, base_name(model))
    return c.tokens, not c.approximate


MESSAGES = st.one_of(
    st.builds(Message, ROLES, TEXTS),
    st.builds(Message, st.just("user"), TEXTS, name=st.sampled_from(["ann", "bob_2"])),
    st.builds(Message, st.just("tool"), TEXTS, tool_call_id=st.sampled_from(["call_1", "c2"])),
    st.builds(Message, st.just("assistant"), TEXTS | st.just(""), tool_calls=st.just(
        (ToolCall("call_1", "weather", '{"city": "Paris"}'),))),
)


@settings(max_examples=200)
@given(st.lists(MESSAGES, min_size=1, max_size=5),
       st.sampled_from(["gpt-4o-mini", "openai/gpt-4o", "gpt-4", "gpt-3.5-turbo-0301", "o3-mini",
                        "ft:gpt-4o-mini-2024-07-18:org::x"]),
       st.booleans())
def test_a_request_counts_as_its_message_dicts_count(messages: list[Message], model: str,
                                                     with_tool: bool) -> None:
    """count_request counts plain-text messages without building their dicts: the same
    figures as the dicts give, whatever the messages hold."""
    tool = {"type": "function", "function": {"name": "weather", "description": "Weather.",
                                             "parameters": {"type": "object", "properties": {}}}}
    request = AIRequest(messages=messages, tools=(tool,) if with_tool else ())
    got = count_request(model, request)
    assert got is not None
    assert (got.tokens, got.exact) == _reference(model, request)
