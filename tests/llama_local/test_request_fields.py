"""The request fields in-process: a grammar holds the answer to JSON or to a JSON schema,
seeds make sampling reproducible, top_p and stop are taken; n and images are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from squirrel_models import (
    AIRequest,
    ImagePart,
    InvalidRequestError,
    Message,
    ModelManager,
    ModelRequirements,
    ResponseFormat,
)

from .conftest import MakeProvider

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
          "required": ["colour"], "additionalProperties": False}


async def test_cards_offer_json(make_provider: MakeProvider, tiny_small: Path) -> None:
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    assert {"json_mode", "json_schema"} <= card.features and "vision" not in card.capabilities


async def test_a_schema_holds_the_answer(make_provider: MakeProvider, smol_path: Path) -> None:
    """The schema's grammar leaves the model no other answer than an object of it."""
    p = await make_provider(models=(str(smol_path),))
    (card,) = await p.list_models()
    req = AIRequest.from_prompt("Name a colour.", max_tokens=32, temperature=0.8, seed=1,
                                response_format=ResponseFormat.json_schema(SCHEMA))
    resp = await p.complete(card, req)
    assert resp.finish_reason == "stop", resp
    assert json.loads(resp.text)["colour"] in ("red", "green", "blue")
    chunks = [c async for c in p.stream(card, req)]
    streamed = "".join(c.text for c in chunks)
    assert json.loads(streamed)["colour"] in ("red", "green", "blue")


async def test_json_mode_opens_an_object(make_provider: MakeProvider, tiny_small: Path) -> None:
    """Even a random-weight model answers JSON under the grammar."""
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    resp = await p.complete(card, AIRequest.from_prompt("x", max_tokens=12, response_format="json_object"))
    assert resp.text.lstrip().startswith("{"), resp.text


async def test_a_seed_makes_sampling_reproducible(make_provider: MakeProvider, tiny_small: Path) -> None:
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()

    async def text(seed: int | None) -> str:
        r = await p.complete(card, AIRequest.from_prompt("x", max_tokens=16, temperature=1.5, top_p=0.99,
                                                         seed=seed, user="u"))
        return r.text

    first = await text(2**40 + 5)  # 64-bit seeds are taken
    assert await text(2**40 + 5) == first
    others = [await text(s) for s in (1, 2, 3)]
    assert any(o != first for o in others)
    # a request without a seed does not inherit the previous one's
    unseeded = [await text(None) for _ in range(3)]
    assert len(set(unseeded)) > 1


@pytest.mark.parametrize(("kw", "field"), [
    ({"n": 2}, "n"),
    ({"messages": [Message.user(["what is this?", ImagePart("https://example.test/a.png")])]}, "messages[0].content"),
    ({"response_format": ResponseFormat.json_schema({"type": "object", "$ref": "#/nowhere"})}, "JSON schema"),
])
async def test_what_it_cannot_honour_is_refused(make_provider: MakeProvider, tiny_small: Path,
                                                kw: dict[str, object], field: str) -> None:
    p = await make_provider(models=(str(tiny_small),))
    (card,) = await p.list_models()
    kw = dict(kw)
    messages = kw.pop("messages", [Message.user("hi")])
    req = AIRequest(messages, max_tokens=4, **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError) as info:
        await p.complete(card, req)
    assert info.value.model_specific and field in str(info.value)
    with pytest.raises(InvalidRequestError):
        async for _ in p.stream(card, req):
            pass
    assert not p.loaded_models()  # refused before the model was loaded


async def test_selection_keeps_images_from_text_models(tiny_small: Path) -> None:
    cfg = {"providers": [{"name": "local", "type": "llama-local",
                          "options": {"models": [str(tiny_small)], "n_threads": 1}}]}
    async with ModelManager(cfg) as mm:
        req = AIRequest([Message.user(["what is this?", ImagePart("https://example.test/a.png")])], max_tokens=4)
        decision = mm.rank(ModelRequirements(), req)
        assert not decision.candidates
        assert decision.excluded == {"local/tiny-small": "lacks capability vision"}
