"""``[providers.options]`` of a ``huggingface`` provider, as a typed attrs class.

Structured by the core's converter, so a bad value fails at start-up with a
:class:`~squirrel_models.errors.ConfigError` naming the field
(``providers[0].options.timeout``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
from squirrel_models.errors import ConfigError
from squirrel_models.upstream import (
    extra_body_fields,
    header_value,
    headers_without_credentials,
    http_url,
    positive_number,
)

__all__ = ["HuggingFaceOptions", "Mode"]

Mode = Literal["hub", "server", "local"]
_DTYPES = frozenset({"auto", "float32", "float16", "bfloat16"})
_url = http_url(example="http://127.0.0.1:8080/v1", secret="token", option="token_env")
_headers = headers_without_credentials(secret="token", option="token_env")


def _non_empty(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not value.strip():
        raise ConfigError("must not be empty (or leave it out)", field=attribute.name)


@attrs.frozen
class HuggingFaceOptions:
    """Options of one Hugging Face provider. Which of three kinds it is follows from the options:

    - ``base_url`` set: a self-hosted Text Generation Inference server, an Inference Endpoint or
      any OpenAI-compatible server (``http://127.0.0.1:8080/v1``); the models are the
      ``[[providers.models]]`` names, sent as ``model`` in each request.
    - ``model_path`` set: a local transformers model folder (``config.json``, weights, tokenizer),
      run in-process; needs the ``local`` extra (transformers, torch).
    - neither: Hugging Face Inference Providers; ``model`` (a Hub model id such as
      ``meta-llama/Llama-3.1-8B-Instruct``) and the ``[[providers.models]]`` names are the models,
      routed by ``inference_provider`` (``auto``: the Hub's router picks).

    Remote options: ``token_env`` names the environment variable holding the token (read once
    into a Secret at start-up; missing: a ConfigError naming this field; None: send none),
    ``timeout`` (seconds per connect, read or write, so also between two streamed chunks),
    ``headers`` (never credentials), ``bill_to`` (an organization), ``stream_usage`` (ask for
    the final usage chunk on streams; servers that send none get their tokens estimated),
    ``extra_body`` (more JSON fields on each chat request).

    Local options: ``model`` (the model's name in its card; default: the folder's name),
    ``device`` (``cpu``, ``cuda``, ``cuda:1``...), ``dtype`` (``auto``, ``float32``,
    ``float16``, ``bfloat16``), ``threads`` (torch CPU threads; None leaves torch's default).
    """

    model: str | None = attrs.field(default=None, validator=_non_empty)
    base_url: str | None = attrs.field(default=None, validator=attrs.validators.optional(_url))
    model_path: str | None = attrs.field(default=None, validator=_non_empty)
    inference_provider: str | None = attrs.field(default=None, validator=_non_empty)
    token_env: str | None = attrs.field(default=None, validator=_non_empty)
    timeout: float = attrs.field(default=60.0, validator=positive_number)
    headers: Mapping[str, str] = attrs.field(factory=dict, validator=_headers, hash=False)
    bill_to: str | None = attrs.field(default=None, validator=header_value)
    stream_usage: bool = True
    extra_body: Mapping[str, Any] = attrs.field(factory=dict, hash=False, validator=extra_body_fields)
    device: str = "cpu"
    dtype: str = "auto"
    threads: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.base_url is not None and self.model_path is not None:
            raise ConfigError("set base_url (a server) or model_path (a local model), not both",
                              field="model_path")
        if self.inference_provider is not None and self.mode != "hub":
            raise ConfigError("applies only to Inference Providers (without base_url or model_path)",
                              field="inference_provider")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"must be one of {', '.join(sorted(_DTYPES))}, got {self.dtype!r}", field="dtype")
        if self.threads is not None and not (isinstance(self.threads, int) and 1 <= self.threads <= 1024):
            raise ConfigError(f"must be an int in 1..1024, got {self.threads!r}", field="threads")

    @property
    def mode(self) -> Mode:
        """``server`` (base_url), ``local`` (model_path) or ``hub`` (Inference Providers)."""
        if self.base_url is not None:
            return "server"
        if self.model_path is not None:
            return "local"
        return "hub"
