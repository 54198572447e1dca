"""A base_url a new user gets wrong: with an endpoint's path, it is refused at start-up;
without the /v1 the server serves under, the 404 says which option to check. Against a real
HTTP server on 127.0.0.1 that serves only ``/v1/models`` and ``/v1/chat/completions``, as
OpenAI's API and vLLM do (the faulty server answers any path ending in the endpoint)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from squirrel_models import AIRequest, ConfigError, InvalidRequestError, ModelManager, SquirrelError

pytestmark = pytest.mark.anyio


class _StrictHandler(BaseHTTPRequestHandler):
    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _unknown(self) -> None:
        self._send(404, {"error": {"message": f"Unknown request URL: {self.command} {self.path}",
                                   "type": "invalid_request_error", "code": "unknown_url"}})

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            return self._unknown()
        self._send(200, {"object": "list", "data": [{"id": "ok", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path != "/v1/chat/completions":
            return self._unknown()
        if body["model"] != "ok":
            return self._send(404, {"error": {"message": f"The model `{body['model']}` does not exist",
                                              "type": "invalid_request_error", "code": "model_not_found"}})
        self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "ok",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "hi"}}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def strict_root() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StrictHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _config(base_url: str, *, discover: bool, model: str = "ok") -> dict[str, Any]:
    return {"providers": [{"name": "local", "type": "openai", "discover": discover,
                           "options": {"base_url": base_url, "transport": "httpx"},
                           "models": [{"name": model, "price": {"input": 0, "output": 0}}]}]}


@pytest.mark.parametrize(("path", "added"), [
    ("/v1/chat/completions", "/chat/completions"), ("/v1/chat/completions/", "/chat/completions"),
    ("/v1/models", "/models"), ("/openai/v1/completions", "/completions"),
])
def test_a_base_url_with_an_endpoint_path_is_refused_naming_the_root(path: str, added: str) -> None:
    """Copied from an API reference's curl line, it loaded, and every request went to
    .../chat/completions/chat/completions: a bare HTTP 404."""
    with pytest.raises(ConfigError) as info:
        ModelManager(_config("http://127.0.0.1:9" + path, discover=False))
    assert info.value.field == "providers[0].options.base_url"
    root = "http://127.0.0.1:9" + path[:path.rindex(added)]
    assert f"ends in {added}, which the provider adds itself" in str(info.value)
    assert f"({root!r})" in str(info.value), str(info.value)


@pytest.mark.parametrize("discover", [True, False])
async def test_a_base_url_without_its_v1_gets_a_404_that_names_the_option(
        strict_root: str, discover: bool) -> None:
    with pytest.raises(InvalidRequestError) as info:
        async with ModelManager(_config(strict_root, discover=discover)) as mm:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=4))
    text = str(info.value)
    assert "HTTP 404" in text, text
    assert (f"the server has no such path: check providers[0].options.base_url ({strict_root}), "
            "which OpenAI-compatible servers usually end in /v1") in text, text


async def test_a_404_for_an_unknown_model_gets_no_path_hint(strict_root: str) -> None:
    async with ModelManager(_config(strict_root + "/v1", discover=False, model="nope")) as mm:
        with pytest.raises(SquirrelError) as info:
            await mm.complete(AIRequest.from_prompt("hi", max_tokens=4))
    assert "does not exist" in str(info.value) and "no such path" not in str(info.value), str(info.value)


async def test_the_right_base_url_answers(strict_root: str) -> None:
    async with ModelManager(_config(strict_root + "/v1/", discover=True)) as mm:
        assert (await mm.complete(AIRequest.from_prompt("hi", max_tokens=4))).text == "hi"
