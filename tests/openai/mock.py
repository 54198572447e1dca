"""Builders for unit tests over ``httpx.MockTransport``: chat bodies, SSE streams, providers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx
from squirrel_models import AIRequest, ModelCard
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)
Handler = Callable[[httpx.Request], httpx.Response]


def card(model: str = "gpt-4o-mini", provider: str = "oa") -> ModelCard:
    return ModelCard.for_provider(provider, model, provider_type="openai")


def completion(text: str = "Hello!", usage: dict[str, Any] | None = None, finish: str = "stop",
               **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": finish}], **extra}
    if usage is not None:
        body["usage"] = usage
    return body


def sse(*events: Any, done: bool = True) -> bytes:
    """An SSE body: each event a JSON object (or a raw string), then ``[DONE]``."""
    out = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def delta(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {} if text is None else {"content": text}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def usage_event(usage: dict[str, Any]) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [], "usage": usage}


def stream_response(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "text/event-stream"}, content=body)


class BrokenStream(httpx.AsyncByteStream):
    """Yields ``parts`` then raises ``error`` (a connection reset mid-body, say)."""

    def __init__(self, parts: Iterable[bytes], error: Exception) -> None:
        self.parts, self.error = list(parts), error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self.parts:
            yield p
        raise self.error


def provider(handler: Handler, *, model: str = "gpt-4o-mini", **options: Any) -> OpenAIProvider:
    """A provider over ``handler``; the injected client is closed with the test's GC."""
    opts = OpenAIOptions(base_url="http://upstream.test/v1", discover=False, **options)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider("oa", opts, client=client)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)
