"""Any upstream answer ends in success or a SquirrelError, and no reservation stays open.

Hypothesis builds answers of every shape: valid bodies and stream chunks with one part replaced
by a random value (an object where a list belongs, numbers where text belongs, huge and
non-finite numbers, wrong types in ``usage``), random JSON, and bytes that are not JSON at all.
They are served to the ``openai`` plugin through ``httpx.MockTransport`` and, with the
``huggingface`` plugin too, by the faulty server on 127.0.0.1 (``FaultyServer.serve``). Each
answer is read once by the provider alone (success or a ``ModelError``) and once through a
``ModelManager`` with a budget (success or a ``SquirrelError``, then no open reservation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, ModelCard, ModelManager, ModelOverride, Price
from squirrel_models.errors import MalformedResponse, ModelError, SquirrelError
from squirrel_models.plugins import PluginManager
from squirrel_models_openai import OpenAIOptions, OpenAIProvider

from ..support.faulty_server import FaultyServer
from ..support.upstream_fuzz import BODIES, STREAMS, Lent
from .conftest import figure

pytestmark = pytest.mark.anyio

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REQUEST = AIRequest.from_prompt("Say hello.", max_tokens=16)
COUNTS = {"answers": 0, "answered": 0, "malformed": 0, "other_model_errors": 0, "manager_typed_errors": 0}


def _card(provider: str, kind: str) -> ModelCard:
    return ModelCard.for_provider(provider, "fuzz", provider_type=kind, features={"streaming", "tools"},
                                  price=None)


async def _read(provider: Any, card: ModelCard, stream: bool) -> None:
    """The provider alone: success, or a ModelError (MalformedResponse for a bad shape)."""
    COUNTS["answers"] += 1
    try:
        if stream:
            async for _ in provider.stream(card, REQUEST):
                pass
        else:
            await provider.complete(card, REQUEST)
        COUNTS["answered"] += 1
    except MalformedResponse:
        COUNTS["malformed"] += 1
    except ModelError:
        COUNTS["other_model_errors"] += 1


def _manager(plugins: PluginManager, **cfg: Any) -> ModelManager:
    base = {"budget": {"limits": [{"scope": "global", "limit": "100"}]},
            "fallback": {"max_attempts": 2, "options": {"retry": {"base_delay": 0.0}}}, "timeout": 5.0}
    return ModelManager({**base, **cfg}, plugins=plugins)


async def _through_manager(mm: ModelManager, stream: bool) -> None:
    """Through the manager: success or a SquirrelError, and every reservation ended."""
    try:
        async with mm:
            if stream:
                async with mm.stream(REQUEST) as s:
                    async for _ in s:
                        pass
            else:
                await mm.complete(REQUEST)
    except SquirrelError:
        COUNTS["manager_typed_errors"] += 1
    assert mm.budget_backend.open_reservations == 0  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    pm = PluginManager()
    pm.load()
    return pm


def _mock_provider(body: Callable[[], bytes], stream: bool) -> OpenAIProvider:
    def answer(request: httpx.Request) -> httpx.Response:
        kind = "text/event-stream" if stream else "application/json"
        return httpx.Response(200, headers={"content-type": kind}, content=body())

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return OpenAIProvider("mock", OpenAIOptions(base_url="http://upstream.test/v1", discover=False), client=client)


@FUZZ
@given(body=st.one_of(BODIES, STREAMS), stream=st.booleans())
async def test_openai_mock_transport(plugins: PluginManager, body: bytes, stream: bool) -> None:
    provider = _mock_provider(lambda: body, stream)
    card = _card("mock", "openai")
    await _read(provider, card, stream)
    mm = _manager(plugins, budget={"allow_unpriced": True, "limits": [{"scope": "global", "limit": "100"}]})
    mm.register_model(card, provider)
    await _through_manager(mm, stream)
    await provider._injected.client.aclose()  # type: ignore[union-attr]


@pytest.fixture
async def served(faulty_session: FaultyServer) -> AsyncIterator[dict[str, Any]]:
    """A provider of each kind on the faulty server, closed after the test's examples."""
    from squirrel_models_huggingface import HuggingFaceOptions, HuggingFaceProvider

    url = faulty_session.base_url
    providers = {
        "openai": OpenAIProvider("srv", OpenAIOptions(base_url=url, discover=False, prices_from=None, timeout=2.0)),
        "huggingface": HuggingFaceProvider("srv", HuggingFaceOptions(base_url=url, timeout=2.0),
                                           models=[ModelOverride("fuzz")]),
    }
    yield providers
    for p in providers.values():
        await p.aclose()


async def _real_server(server: FaultyServer, plugins: PluginManager, provider: Any, kind: str, body: bytes,
                       stream: bool) -> None:
    content_type = "text/event-stream" if stream else "application/json"
    card = ModelCard.for_provider("srv", "fuzz", provider_type=kind, features={"streaming", "tools"},
                                  price=Price(Decimal(1), Decimal(1)))
    server.serve("fuzz", body, content_type=content_type)
    await _read(provider, card, stream)
    for _ in range(2):  # a retry gets the same answer
        server.serve("fuzz", body, content_type=content_type)
    mm = _manager(plugins)
    mm.register_model(card, Lent(provider))  # type: ignore[arg-type]
    await _through_manager(mm, stream)
    server._scripts.pop("fuzz", None)
    server._raw.clear()


@FUZZ
@given(body=st.one_of(BODIES, STREAMS), stream=st.booleans())
async def test_openai_real_server(plugins: PluginManager, faulty_session: FaultyServer, served: dict[str, Any],
                                  body: bytes, stream: bool) -> None:
    await _real_server(faulty_session, plugins, served["openai"], "openai", body, stream)


@settings(FUZZ, max_examples=50)
@given(body=st.one_of(BODIES, STREAMS), stream=st.booleans())
async def test_huggingface_real_server(plugins: PluginManager, faulty_session: FaultyServer,
                                       served: dict[str, Any], body: bytes, stream: bool) -> None:
    await _real_server(faulty_session, plugins, served["huggingface"], "huggingface", body, stream)


def test_figures() -> None:
    figure("fuzzed_upstream_answers", **COUNTS)
