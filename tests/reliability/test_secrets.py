"""The canary key, configured for every provider, never shows while the error paths are
forced: upstream echoes of the key (401, a 400 echoing every header), every fault, the
configuration mistakes people make with keys, reprs, logs at every level, metrics and spans.
(The load test also scans everything its thousands of requests produced.)"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
from squirrel_models import AIRequest, ModelManager, ModelRequirements, SquirrelError
from squirrel_models.errors import ConfigError

from ..support.faulty_server import FaultyServer
from . import compose
from .conftest import CANARY, Everything, figure

pytestmark = pytest.mark.anyio

LEAKY = ["alpha/reset", "alpha/malformed", "alpha/rate-limit:0.05", "alpha/error:500", "alpha/hang",
         "beta/auth", "beta/truncate", "beta/stream-error", "beta/malformed-stream", "beta/error:400",
         "delta/hang-stream"]


async def test_canary_never_leaks(faulty: FaultyServer, canary_env: str, tmp_path: Path, squirrel_manager: Any,
                                  squirrel_metrics: Any, all_logs: Everything,
                                  caplog: pytest.LogCaptureFixture) -> None:
    texts: list[str] = []
    faulty.script("error:400", *["echo"] * 4)  # a server echoing every request header, key included
    async with squirrel_manager(compose.config(faulty, str(tmp_path / "s.sqlite3"))) as mm:
        texts += [repr(mm.providers), repr(mm.config), repr(list(mm.models.values())), repr(mm.plugins)]
        for model in LEAKY:
            for stream in (False, True):
                req = AIRequest.from_prompt(f"leak {model} {stream}", max_tokens=8)
                need = ModelRequirements(models={model, "gamma/ok"} if stream else {model})
                try:
                    if stream:
                        async with mm.stream(req, need, timeout=0.8) as s:
                            async for _ in s:
                                pass
                        texts.append(repr(s.response))
                    else:
                        texts.append(repr(await mm.complete(req, need, timeout=0.8)))
                except SquirrelError as exc:
                    texts += compose.texts_of(exc)
    # Configuration mistakes: the key itself where the variable's name belongs, or in a URL.
    for options in ({"api_key_env": CANARY}, {"base_url": f"http://user:{CANARY}@127.0.0.1:9/v1"},
                    {"base_url": f"http://127.0.0.1:9/v1?key={CANARY}"}, {"headers": {"Authorization": CANARY}}):
        cfg = compose.config(faulty, str(tmp_path / "c.sqlite3"))
        cfg["providers"][0]["options"].update(options)
        with pytest.raises(ConfigError) as info:
            ModelManager(cfg)
        texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
    assert any(h.get("authorization") == f"Bearer {CANARY}" for h in faulty.headers_seen)  # really sent
    texts += [r.getMessage() for r in caplog.records] + all_logs.texts + [squirrel_metrics.everything()]
    found = compose.leaks(texts)
    figure("secrets", texts_scanned=len(texts), leaks=len(found))
    assert not found, found[:2]
