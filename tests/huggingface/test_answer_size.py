"""A remote answer (Inference, Endpoints, TGI) is read within the core's bound
(``squirrel_models.answersize``), as the openai plugin's is: a body without end, a length the
server never keeps, a compressed body that inflates past the bound, an error body without end
and a server-sent event whose line never ends are each a ``MalformedResponse`` once the bound
is passed, and the connection is dropped. Before, huggingface_hub read each into memory until
the deadline. A real server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from squirrel_models import AIRequest, ModelCard, ModelOverride
from squirrel_models.answersize import MAX_ANSWER_BYTES
from squirrel_models.errors import InvalidRequestError, MalformedResponse, ServerError
from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

from ..support.flooding import KINDS, answering, flooding

pytestmark = pytest.mark.anyio

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)
CARD = ModelCard.for_provider("hf", "m", provider_type="huggingface")


def provider(port: int) -> HuggingFaceProvider:
    return HuggingFaceProvider("hf", HuggingFaceOptions(base_url=f"http://127.0.0.1:{port}/v1", timeout=60.0),
                               models=[ModelOverride("m")])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_an_answer_past_the_bound_is_malformed_and_dropped(kind: str, stream: bool) -> None:
    if kind == "event" and not stream:
        pytest.skip("an event stream answers a streamed request")
    # A streamed error answer's body is read for its details only briefly (within 1 s and the
    # bound): its status decides.
    expected = (ServerError, "HTTP 500") if kind == "error" and stream else (MalformedResponse, "larger than 64 MiB")
    async with flooding(kind) as (port, sent):
        p = provider(port)
        try:
            with anyio.fail_after(50), pytest.raises(expected[0], match=expected[1]):
                if stream:
                    async for _ in p.stream(CARD, REQUEST):
                        pass
                else:
                    await p.complete(CARD, REQUEST)
        finally:
            await p.aclose()
        with anyio.fail_after(30):
            while not sent:  # the server saw the connection dropped
                await anyio.sleep(0.01)
    assert sent[0] < 2 * MAX_ANSWER_BYTES


async def answered(body: bytes, kind: str, stream: bool) -> str:
    """The text a provider reads from a server on 127.0.0.1 that answers ``body`` (chunked)."""
    async with answering(body, kind) as port:
        p = provider(port)
        try:
            with anyio.fail_after(50):
                if stream:
                    got = "".join([c.text async for c in p.stream(CARD, REQUEST)])
                else:
                    got = (await p.complete(CARD, REQUEST)).text
        finally:
            await p.aclose()
    return got


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_an_answer_within_the_bound_is_read_whole(stream: bool) -> None:
    """Just below the bound, in many pieces: still an answer (the bound is on bytes decoded,
    and on each event of a stream, not on the stream's whole)."""
    text = "a" * (MAX_ANSWER_BYTES - 1024)
    if stream:
        delta = json.dumps({"choices": [{"index": 0, "delta": {"content": "a" * 2**20}}]})
        last = json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]})
        # more than the bound in all, each event within it
        body = (f"data: {delta}\n\n" * 8 + f"data: {last}\n\ndata: [DONE]\n\n").encode()
        got = await answered(body, "text/event-stream", True)
    else:
        body = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode()
        got = await answered(body, "application/json", False)
    assert len(got) == len(text) + (8 * 2**20 if stream else 0)


async def test_events_end_only_where_the_format_ends_lines() -> None:
    """Raw U+2028, U+0085 and form feeds inside an event's JSON (valid JSON) keep the event
    whole: httpx's line reader ended lines at them, and the chunk was malformed."""
    text = "a\u2028b\u0085c\x0cd"
    events = [{"choices": [{"index": 0, "delta": {"content": text}}]},
              {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
    assert await answered((body + "data: [DONE]\n\n").encode(), "text/event-stream", True) == text


@pytest.fixture
def hub_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Points huggingface_hub's Hub endpoint at a server on 127.0.0.1."""
    from huggingface_hub import constants

    def point(port: int) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    return point


def hub_provider(model: str) -> HuggingFaceProvider:
    return HuggingFaceProvider("hf", HuggingFaceOptions(inference_provider="together", timeout=60.0),
                               models=[ModelOverride(model)])


@pytest.mark.parametrize("kind", ["endless", "length", "gzip"])
async def test_the_hubs_model_look_up_past_the_bound_is_malformed_and_dropped(
        kind: str, hub_at: Callable[[int], None]) -> None:
    """Inference Providers with a named provider: the Hub's answer to the model look-up is read
    within the bound too. Before, huggingface_hub read it whole in a worker thread."""
    model = f"org/flood-{kind}"  # huggingface_hub remembers mappings it found, per model
    async with flooding(kind) as (port, sent):
        hub_at(port)
        p = hub_provider(model)
        card = ModelCard.for_provider("hf", model, provider_type="huggingface")
        try:
            with anyio.fail_after(50), pytest.raises(MalformedResponse, match="larger than 64 MiB"):
                await p.complete(card, REQUEST)
        finally:
            await p.aclose()
        with anyio.fail_after(30):
            while not sent:
                await anyio.sleep(0.01)
    assert sent[0] < 2 * MAX_ANSWER_BYTES


@pytest.mark.parametrize(("mapping", "error"), [
    ({"together": {"status": "live", "providerId": "Org/Served", "task": "conversational"}}, None),
    ({"together": {"status": "live", "providerId": "x", "task": "text-to-image"}}, "not for chat"),
    ({"groq": {"status": "live", "providerId": "x", "task": "conversational"}}, "not served by"),
])
async def test_the_hubs_model_look_up_gives_huggingface_hub_the_mapping(
        mapping: dict[str, Any], error: str | None, hub_at: Callable[[int], None]) -> None:
    """A look-up within the bound is what huggingface_hub then routes by (it asks the Hub no
    more); a model the provider does not serve for chat is a request error."""
    from huggingface_hub.inference._providers import get_provider_helper

    model = f"org/served-{len(error or '')}"
    body = json.dumps({"id": model, "inferenceProviderMapping": mapping}).encode()
    async with answering(body, "application/json") as port:
        hub_at(port)
        backend = hub_provider(model).remote
        assert backend is not None
        with anyio.fail_after(30):
            if error is not None:
                with pytest.raises(InvalidRequestError, match=error):
                    await backend._warm_mapping(model)
                return
            await backend._warm_mapping(model)
    helper = get_provider_helper("together", "conversational", model)
    assert helper._prepare_mapping_info(model).provider_id == "Org/Served"
