"""``[providers.options]`` of an ``openai`` provider, as a typed attrs class.

Structured by the core's converter, so a bad value fails at start-up with a
:class:`~squirrel_models.errors.ConfigError` naming the field
(``providers[0].options.timeout``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
from squirrel_models.errors import ConfigError
from squirrel_models.upstream import (
    extra_body_fields,
    header_name,
    header_value,
    headers_without_credentials,
    http_url,
    positive_number,
)

__all__ = ["OpenAIOptions", "Transport"]

Transport = Literal["auto", "httpx", "aiohttp"]
_url = http_url(example="https://api.openai.com/v1", secret="key", option="api_key_env")
_headers = headers_without_credentials(secret="key", option="api_key_env")


#: The endpoints the provider adds to ``base_url`` itself (and their neighbours people copy
#: from an API reference); a ``base_url`` ending in one sent every request to
#: ``.../chat/completions/chat/completions``, a bare 404.
_ENDPOINT = re.compile(r"/(?:chat/completions|completions|models|embeddings|responses)/?$", re.I)


def _base_url(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    _url(instance, attribute, value)
    found = _ENDPOINT.search(urlsplit(value).path)
    if found is not None:
        root = value[:len(value) - len(urlsplit(value).path) + found.start()] or value
        raise ConfigError(f"ends in {found[0].rstrip('/')}, which the provider adds itself: base_url "
                          f"is the API's root ({root!r}), not an endpoint"[:300], field=attribute.name)


def _check_connections(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= 10_000:
        raise ConfigError(f"must be in 1..10000, got {value}", field=attribute.name)


@attrs.frozen
class OpenAIOptions:
    """Options of one OpenAI-compatible endpoint.

    - ``base_url``: up to and including ``/v1`` (``http://127.0.0.1:8080/v1`` for llama.cpp).
    - ``api_key_env``: the name of the environment variable holding the API key, read once at
      start-up (missing: a ConfigError naming this field). None: send no key (local servers).
    - ``api_key_header``: the header that carries the key: ``Authorization`` (as ``Bearer
      KEY``, the default), or another name, which gets the key as it is: ``api-key`` (Azure
      OpenAI), ``x-api-key``, ``x-goog-api-key``. ``headers`` may never carry a key.
    - ``organization``, ``project``: OpenAI's ``OpenAI-Organization``/``OpenAI-Project``.
    - ``timeout``: seconds to wait for each read (so also between two streamed chunks), write
      or free pooled connection; ``connect_timeout`` for a connection.
    - ``discover``: deprecated, kept so older files load: discovery is switched by the
      ``[[providers]]`` entry's own ``discover`` (one place); ``false`` here still turns it
      off, with a warning.
    - ``transport``: ``auto`` (the faster aiohttp engine under asyncio, httpx's own under
      trio), ``httpx`` or ``aiohttp`` (asyncio only).
    - ``max_connections``: size of the connection pool, all kept alive.
    - ``headers``: extra headers on every request (never credentials); ``extra_body``: extra
      JSON fields on every chat request (``{"top_p": 0.9}``).
    - ``max_tokens_field``: ``max_tokens``, or ``max_completion_tokens`` (OpenAI o-series).
    - ``stream_usage``: ask for the usage chunk at the end of streams.
    - ``prices_from``: whose catalogue entries (price, features, context window, output
      limit; see ``_catalogue``) apply to these models. ``auto``: the provider whose API
      ``base_url`` is (``api.openai.com``: ``openai``), none for any other host, so a local
      server's ``gpt-4o-mini`` is unpriced rather than priced at OpenAI's rates; a provider id
      (``openai``, ``azure``, ``openrouter``...): that provider's, for a gateway or proxy that
      serves its models at its prices; ``none`` (or None): no catalogue data.
    - ``encoding``: the tiktoken encoding of the served models (``o200k_base``) when their
      names do not tell (Azure deployments); None: by model name.
    """

    base_url: str = attrs.field(default="https://api.openai.com/v1", validator=_base_url)
    api_key_env: str | None = None
    api_key_header: str = attrs.field(default="Authorization", validator=header_name)
    organization: str | None = attrs.field(default=None, validator=header_value)
    project: str | None = attrs.field(default=None, validator=header_value)
    timeout: float = attrs.field(default=60.0, validator=positive_number)
    connect_timeout: float = attrs.field(default=10.0, validator=positive_number)
    discover: bool | None = None
    transport: Transport = "auto"
    max_connections: int = attrs.field(default=100, validator=_check_connections)
    headers: Mapping[str, str] = attrs.field(factory=dict, validator=_headers, hash=False)
    extra_body: Mapping[str, Any] = attrs.field(factory=dict, hash=False, validator=extra_body_fields)
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    stream_usage: bool = True
    prices_from: str | None = "auto"
    encoding: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.transport not in ("auto", "httpx", "aiohttp"):
            raise ConfigError(f"must be auto, httpx or aiohttp, got {self.transport!r}", field="transport")
        if self.prices_from is not None and not self.prices_from.strip():
            raise ConfigError("must be auto, none or a provider id such as openai", field="prices_from")
        if self.api_key_env is not None and not self.api_key_env:
            raise ConfigError("must name an environment variable (or be left out)", field="api_key_env")
        if self.api_key_header != "Authorization":
            if self.api_key_env is None:
                # Accepted, it would send no key at all: every request a 401.
                raise ConfigError("names the header of a key, but api_key_env names none: set api_key_env "
                                  "to the environment variable holding the key", field="api_key_header")
            if any(h.lower() == self.api_key_header.lower() for h in self.headers):
                raise ConfigError(f"{self.api_key_header} carries the key (api_key_header): it must not be "
                                  "set here too", field=f"headers.{self.api_key_header}")
        from ._tiktoken_offline import OFFLINE_ENCODINGS

        if self.encoding is not None and self.encoding not in OFFLINE_ENCODINGS:
            raise ConfigError(f"must be one of {', '.join(sorted(OFFLINE_ENCODINGS))}, got {self.encoding!r}",
                              field="encoding")
