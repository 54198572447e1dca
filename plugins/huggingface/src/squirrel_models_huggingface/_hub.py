"""The Hub's model look-up for Inference Providers, read within the core's bound
(:mod:`squirrel_models.answersize`).

With a named ``inference_provider``, huggingface_hub looks the model up on the Hub
(``HfApi().model_info(model, expand=["inferenceProviderMapping"])``, then cached) while it
builds the first request: blocking, and reading the answer whole through its process-wide
session, so a Hub endpoint (or a proxy in front of it) answering without end grew the process
until the deadline. :func:`look_up` asks the Hub itself, asynchronously, through a client whose
answers are bounded (:mod:`._bounded`), checks the mapping as huggingface_hub would, and hands
it to huggingface_hub's table of known mappings, which its request building reads before
asking the Hub (``HARDCODED_MODEL_INFERENCE_MAPPING``: private, hence the ``<3`` pin). The
``hf-inference`` provider checks the model's task by a look-up of its own that reads no such
table: it is still looked up by huggingface_hub, in a worker thread.
"""

from __future__ import annotations

from typing import Any

import anyio
from squirrel_models.errors import InvalidRequestError

__all__ = ["look_up"]

TASK = "conversational"


def _hub_checks_the_table(provider: str, model: str) -> bool:
    """Whether ``provider``'s helper reads huggingface_hub's table before asking the Hub."""
    from huggingface_hub.inference._providers import get_provider_helper
    from huggingface_hub.inference._providers._common import TaskProviderHelper

    helper = get_provider_helper(provider, TASK, model)  # type: ignore[arg-type]
    return type(helper)._prepare_mapping_info is TaskProviderHelper._prepare_mapping_info


async def look_up(provider: str, model: str, *, token: str | None, timeout: float) -> None:
    """Make sure huggingface_hub knows which id ``provider`` serves ``model`` under, asking the
    Hub within the bound; a model the provider does not serve for chat is an
    :class:`InvalidRequestError`, an answer past the bound a ``MalformedResponse``."""
    from huggingface_hub import ModelInfo, constants, get_async_session
    from huggingface_hub.inference._providers._common import HARDCODED_MODEL_INFERENCE_MAPPING
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    from ._bounded import bound_answers
    from .remote import _reading

    if HARDCODED_MODEL_INFERENCE_MAPPING.get(provider, {}).get(model):
        return
    if not _hub_checks_the_table(provider, model):
        def lookup() -> None:
            from huggingface_hub.inference._providers import get_provider_helper

            get_provider_helper(provider, TASK, model)._prepare_mapping_info(model)  # type: ignore[arg-type]

        await anyio.to_thread.run_sync(lookup)
        return

    client = bound_answers(get_async_session())
    async with client:
        answer = await client.get(f"{constants.ENDPOINT}/api/models/{model}",
                                  params={"expand": ["inferenceProviderMapping"]},
                                  headers=build_hf_headers(token=token), timeout=timeout)
        hf_raise_for_status(answer)
        with _reading("the Hub's model information"):
            data: Any = answer.json()
            if not isinstance(data, dict):
                raise TypeError("not an object")
            mappings = ModelInfo(**data).inference_provider_mapping or []
            mapping = next((m for m in mappings if m.provider == provider), None)
    if mapping is None:
        raise InvalidRequestError(f"model {model!r} is not served by inference provider {provider!r}")
    if mapping.task != TASK:
        raise InvalidRequestError(f"model {model!r} is served by inference provider {provider!r} "
                                  f"for {mapping.task!r}, not for chat")
    HARDCODED_MODEL_INFERENCE_MAPPING.setdefault(provider, {})[model] = mapping
