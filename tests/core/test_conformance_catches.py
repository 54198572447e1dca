"""The HTTP conformance kit fails a wrong provider and passes a right one: a provider that
quotes a key it never registered in its errors, one that shields its call from cancellation
(so a request outlives its deadline), and one that never closes its client. Each runs the kit
in a pytest of its own, as a plugin's test suite would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PLUGIN_TESTS = '''
import os

import anyio
import attrs
import httpx
import pytest
from squirrel_models import AuthenticationError, ProviderSpec, SimpleProvider, Usage
from squirrel_models.simple import raise_for_status, sse_json
from squirrel_models.testing.conformance import HTTPProviderConformance

KEY = "sk-kit-canary-5e1f0a9b3c7d"


@pytest.fixture(params=["asyncio"])
def anyio_backend(request):
    return request.param


@attrs.frozen
class Options:
    base_url: str
    timeout: float
    api_key_env: str | None = "KIT_KEY"


class Right(SimpleProvider):
    default_models = ("ok",)
    supports = frozenset({"max_tokens", "stop"})

    def __init__(self, spec):
        super().__init__(spec)
        key = self.secret("api_key_env")
        self.client = httpx.AsyncClient(base_url=self.options.base_url, timeout=self.options.timeout,
                                        headers={"Authorization": f"Bearer {key.reveal()}"} if key else {})

    async def generate(self, model, request):
        body = {"model": model.model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": m.role, "content": m.text} for m in request.messages],
                "max_tokens": request.max_tokens, "stop": list(request.stop) or None}
        async with self.client.stream("POST", "/chat/completions", json=body) as response:
            await raise_for_status(response)
            async for event in sse_json(response):
                for choice in event.get("choices") or []:
                    yield choice["delta"].get("content") or ""
                if usage := event.get("usage"):
                    yield Usage(usage["prompt_tokens"], usage["completion_tokens"])

    async def aclose(self):
        await self.client.aclose()


class LeaksKey(Right):
    """Reads the key itself (never registered for redaction) and quotes it."""

    def __init__(self, spec):
        super().__init__(attrs.evolve(spec, options=attrs.evolve(spec.options, api_key_env=None)))
        self.key = os.environ["KIT_KEY"]
        self.client.headers["Authorization"] = f"Bearer {self.key}"

    def translate(self, exc):
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
            return AuthenticationError(f"the key {self.key} was refused")
        return super().translate(exc)


class IgnoresDeadline(Right):
    """Shields its upstream call: a cancelled request waits for the provider's own timeout."""

    async def generate(self, model, request):
        with anyio.CancelScope(shield=True):
            items = [x async for x in super().generate(model, request)]
        for x in items:
            yield x


class NeverReleases(Right):
    """Asks for whole answers (a keep-alive connection each) and never closes its client."""

    async def generate(self, model, request):
        body = {"model": model.model, "messages": [{"role": m.role, "content": m.text} for m in request.messages],
                "max_tokens": request.max_tokens, "stop": list(request.stop) or None}
        response = await self.client.post("/chat/completions", json=body)
        response.raise_for_status()
        answer = response.json()
        yield answer["choices"][0]["message"]["content"]
        yield Usage(answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"])

    async def aclose(self):
        pass


def kit(cls):
    class Kit(HTTPProviderConformance):
        @pytest.fixture
        def secrets(self):
            return [KEY]

        @pytest.fixture
        async def provider(self, fake_server, monkeypatch):
            monkeypatch.setenv("KIT_KEY", KEY)
            p = cls(ProviderSpec("kit", "kit", Options(fake_server.base_url, self.timeout)))
            yield p
            await p.aclose()

    return Kit


TestRight = kit(Right)
TestLeaksKey = kit(LeaksKey)
TestIgnoresDeadline = kit(IgnoresDeadline)
TestNeverReleases = kit(NeverReleases)
'''

CHECKS = "test_no_secret_in_errors or test_cancelled_call_ends_at_once or test_aclose_closes_every_connection"


def test_the_kit_fails_each_wrong_provider_and_passes_the_right_one(tmp_path: Path) -> None:
    (tmp_path / "test_plugin.py").write_text(PLUGIN_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-k", CHECKS,
                           str(tmp_path / "test_plugin.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = done.stdout
    outcome = {m.group(2): m.group(1) for m in re.finditer(r"^(PASSED|FAILED|ERROR|SKIPPED) [^:\s]+::(\S+)", out, re.M)}
    by_class: dict[str, dict[str, set[str]]] = {}
    for test, result in outcome.items():
        cls, _, name = test.partition("::")
        by_class.setdefault(cls, {}).setdefault(result, set()).add(name.split("[")[0])
    assert set(by_class.get("TestRight", {})) == {"PASSED"}, out[-4000:]
    assert "test_no_secret_in_errors" in by_class["TestLeaksKey"].get("FAILED", set()), out[-4000:]
    assert "test_cancelled_call_ends_at_once" in by_class["TestIgnoresDeadline"].get("FAILED", set()), out[-4000:]
    assert by_class["TestNeverReleases"].get("FAILED") == {"test_aclose_closes_every_connection"}, out[-4000:]
    assert "the error shows the key (sk-***)" in out and "a cancellation must end it at once" in out
    assert "still open after aclose()" in out
