"""The text of an answer is the bytes of its tokens, whatever they are: characters split
across tokens (an emoji's four bytes, CJK's three) arrive whole and once, and a token longer
than 32 bytes (SmolLM2 has 47: runs of ``-`` and ``#``, indented lines' whitespace) keeps its
text. A model that always writes the same script (tinygguf.build_scripted_gguf) makes the
answer exact.

Before: ``Llama.detokenize`` of llama-cpp-python 0.3.36 read a token into 32 bytes and
returned nothing for a longer one; the 64 ``=`` and the indented line below vanished from
the answer while their tokens were counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from squirrel_models import SyncModelManager
from squirrel_models.types import AIRequest

from .conftest import MakeProvider
from .tinygguf import build_scripted_gguf

pytestmark = pytest.mark.anyio


def _bytes(text: str) -> list[bytes]:
    return [bytes([b]) for b in text.encode()]


#: One token per piece: single bytes (an emoji and two CJK characters split into them), a
#: two-byte character as one token, and three tokens longer than 32 bytes.
SCRIPT = [*_bytes("Hi "), *_bytes("\U0001F600"), b"-", *_bytes("\u4e16\u754c"), b"=" * 64,
          b"\n" + b" " * 44, "\u00e9".encode(), b"#" * 40, b"."]
TEXT = b"".join(SCRIPT).decode()
GO = AIRequest.from_prompt("go", max_tokens=100)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scripted_gguf(tmp_path_factory.mktemp("scripted") / "scripted.gguf", SCRIPT)


async def test_every_byte_of_every_token_arrives_once(make_provider: MakeProvider, scripted: Path) -> None:
    p = await make_provider(models=(str(scripted),))
    (card,) = await p.list_models()
    resp = await p.complete(card, GO)
    assert (resp.text, resp.finish_reason) == (TEXT, "stop")
    assert resp.usage.output_tokens == len(SCRIPT)
    chunks = [c async for c in p.stream(card, GO)]
    assert "".join(c.text for c in chunks) == TEXT
    # each character whole in one chunk: the emoji's and the CJK characters' bytes came
    # in separate tokens
    pieces = [c.text for c in chunks if c.text]
    assert "\U0001F600" in pieces and "\u4e16" in pieces and "=" * 64 in pieces
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == len(SCRIPT)


@pytest.mark.parametrize(("stop", "before"), [
    ("\u754c", "Hi \U0001F600-\u4e16"),          # a character that came in three tokens
    ("==", "Hi \U0001F600-\u4e16\u754c"),       # inside a 64-byte token
    ("\u754c===", "Hi \U0001F600-\u4e16"),       # across tokens
    ("\u00e9#", TEXT[:TEXT.index("\u00e9")]),  # a two-byte token, then a long one
])
async def test_stop_strings_anywhere_in_the_pieces(make_provider: MakeProvider, scripted: Path,
                                                   stop: str, before: str) -> None:
    p = await make_provider(models=(str(scripted),))
    (card,) = await p.list_models()
    req = AIRequest.from_prompt("go", max_tokens=100, stop=(stop,))
    resp = await p.complete(card, req)
    assert (resp.text, resp.finish_reason) == (before, "stop")
    streamed = "".join([c.text async for c in p.stream(card, req)])
    assert streamed == before


async def test_a_cap_inside_a_character_ends_with_one_replacement(make_provider: MakeProvider,
                                                                  scripted: Path) -> None:
    """Cut after two of the emoji's four bytes: the partial character is one U+FFFD (the
    tokens were generated and are charged), never bytes lost silently or a broken string."""
    p = await make_provider(models=(str(scripted),))
    (card,) = await p.list_models()
    req = AIRequest.from_prompt("go", max_tokens=5)
    resp = await p.complete(card, req)
    assert (resp.text, resp.finish_reason, resp.usage.output_tokens) == ("Hi \ufffd", "length", 5)
    assert "".join([c.text async for c in p.stream(card, req)]) == "Hi \ufffd"


def test_through_the_sync_manager(scripted: Path) -> None:
    cfg = {"providers": [{"name": "local", "type": "llama-local", "options": {"models": [str(scripted)]}}]}
    with SyncModelManager(cfg) as mm, mm.stream(GO) as s:
        text = "".join(c.text for c in s)
    assert text == TEXT
    assert s.response is not None and s.response.text == TEXT
    assert s.response.usage.output_tokens == len(SCRIPT)
