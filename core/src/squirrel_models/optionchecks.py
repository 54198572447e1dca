"""Validators of plugin options that every HTTP provider shares (internal; re-exported by
:mod:`squirrel_models.upstream`, where plugins import them): an http(s) URL without
credentials, headers that carry none, a positive number. Each raises a
:class:`~squirrel_models.errors.ConfigError` naming the field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from .errors import ConfigError, shown

__all__ = ["Validator", "extra_body_fields", "header_name", "header_value", "headers_without_credentials",
           "http_url", "positive_number"]

#: Headers that carry credentials: only the option naming an environment variable may set them.
_CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})
#: ...and any header whose name says it carries one (x-goog-api-key, Ocp-Apim-Subscription-Key,
#: X-Auth-Token, Cookie): set as a plain option it would show in reprs and go unredacted.
_CREDENTIAL_NAME = re.compile(r"(?:^|[-_])(?:key|token|secret|auth\w*|cookie|password|passwd|"
                              r"signature|credentials?|session)(?:$|[-_])", re.IGNORECASE)

#: What HTTP lets a header be: a name of token characters (RFC 9110), a value of visible ASCII,
#: spaces and tabs. Anything else (a space in the name, a line break, a NUL, an accent) was taken
#: at start-up and failed every request in the HTTP client, as a bug of the plugin.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _host_name_ok(parts: Any) -> bool:
    """Whether the URL's host can be looked up: an IP literal, or a name both IDNA encoders of
    the HTTP stack take (the standard library's, for the resolver, and the ``idna`` package's,
    which httpx, anyio and trio use)."""
    host = parts.hostname
    if parts.netloc.rpartition("@")[2].startswith("["):
        return True  # an IPv6 literal
    try:
        host.encode("idna")  # empty labels, labels over 63 characters
        if host.isascii() and "xn--" not in host:
            return True  # as the stack sends it: "my_service" (a compose service) is fine
        import idna  # httpx's own dependency

        idna.encode(host, uts46=True)
    except ImportError:
        return True
    except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
        return False
    return True


def http_url(*, example: str, secret: str = "key", option: str = "api_key_env") -> Validator:
    """An attrs validator: an http(s) URL (``example`` shows one) without credentials, query or
    fragment, which end up in logs; the message points at ``option``, where the ``secret`` goes.
    Wrap it in ``attrs.validators.optional`` for a field that may be None."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        try:
            parts = urlsplit(value)
            credentials = bool(parts.username or parts.password or parts.query or parts.fragment)
            port = parts.port  # reading it checks it: a number in 0..65535
        except (ValueError, TypeError):
            parts, port = None, 0
            credentials = any(c in str(value) for c in "@?#")  # unparseable: judged by shape
        if credentials:  # checked first: such a URL is never echoed
            raise ConfigError(f"must not contain credentials, a query or a fragment (put the {secret} in "
                              f"the environment variable named by {option})", field=attribute.name)
        # Accepted, a bad port, a blank or a host name no resolver takes ("a..b", a label of
        # 64 characters, "xn--") failed every request later, not here.
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or port == 0 or not value.isprintable() or any(c.isspace() for c in value)
                or not _host_name_ok(parts)):
            raise ConfigError(f"must be an http(s) URL such as {example} (a host, a port in "
                              f"1..65535 if any, no blanks), got {value!r}"[:300], field=attribute.name)

    return check


def headers_without_credentials(*, secret: str = "key", option: str = "api_key_env") -> Validator:
    """An attrs validator: a mapping of header names to values that HTTP can send (a name of
    token characters; a value of printable ASCII, spaces and tabs), none of which carries
    credentials (``Authorization``, ``api-key``...): only ``option`` may set those, so they
    stay secret. The error names the header (``headers.Authorization``)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError("header names and values must be strings", field=attribute.name)
            if not _HEADER_NAME.fullmatch(k):
                raise ConfigError(f"{k!r} is not a header name (letters, digits and !#$%&'*+.^_`|~- "
                                  "only)"[:300], field=attribute.name)
            if k.lower() in _CREDENTIAL_HEADERS or _CREDENTIAL_NAME.search(k):
                raise ConfigError(f"{k} must not be set here: name the environment variable holding "
                                  f"the {secret} in {option}", field=f"{attribute.name}.{k}")
            _check_header_value(v, f"{attribute.name}.{k}")

    return check


def _check_header_value(value: str, field: str) -> None:
    if not _HEADER_VALUE.fullmatch(value):  # the value is not shown: it may be private
        bad = next(c for c in value if not _HEADER_VALUE.fullmatch(c))
        raise ConfigError(f"a header value is printable ASCII, spaces and tabs only; this one holds "
                          f"{bad!r} at index {value.index(bad)}", field=field)


def header_value(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """An attrs validator of an option sent as a header's value (OpenAI's ``organization``,
    Hugging Face's ``bill_to``): None, or a string of printable ASCII, spaces and tabs."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {type(value).__name__}", field=attribute.name)
    _check_header_value(value, attribute.name)


def header_name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """An attrs validator of an option naming a header: RFC 9110 token characters."""
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise ConfigError(f"must be an HTTP header name such as Authorization or api-key, got "
                          f"{shown(value)}", field=attribute.name)


def positive_number(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    """An attrs validator: a finite number > 0 (a timeout, say); booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"must be a finite number > 0, got {value!r}", field=attribute.name)


def extra_body_fields(instance: Any, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    """An attrs validator of an ``extra_body`` option (JSON fields added to every chat
    request): a JSON object, which sets none of the fields squirrel-models reads itself
    (``n``, ``max_tokens``, ``max_completion_tokens``, ``stream``, ``tools``...: sent over the
    request's own, ``n = 4`` made every answer four on a reservation of one), nor a field that
    makes the upstream bill what the configured prices do not cover (``service_tier =
    "priority"``, ``audio``, ``web_search_options``...: ``openai_format.COST_CHANGING``; a
    value that costs no more, ``service_tier = "flex"``, is kept). Fields such as ``top_p`` or
    ``repetition_penalty`` are defaults the request's own fields override."""
    from .openai_format import COST_CHANGING, NOT_PASSABLE

    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a table of JSON fields, got {type(value).__name__}",
                          field=attribute.name)
    for k in value:
        if not isinstance(k, str):
            raise ConfigError("field names must be strings", field=attribute.name)
        if k in NOT_PASSABLE:
            raise ConfigError("is set by squirrel-models on each request (it decides what the "
                              "request may cost, or how it is carried): set it on the request, "
                              "or max_tokens_field and default_max_tokens",
                              field=f"{attribute.name}.{k}")
        if k in COST_CHANGING and not _cost_neutral(k, value[k]):
            # On every request, at prices that do not reflect it (service_tier = "priority").
            raise ConfigError(f"changes what each request costs upstream: {COST_CHANGING[k]}; "
                              "the configured prices and budgets would not cover it",
                              field=f"{attribute.name}.{k}")
    try:  # as it is sent: TOML's nan and inf are no JSON (every request would be a 400)
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"is not JSON ({type(exc).__name__}: {exc})"[:300],
                          field=attribute.name) from None


def _cost_neutral(name: str, value: Any) -> bool:
    """``value`` of the cost-changing field ``name`` costs no more than leaving it out."""
    from .openai_format import COST_NEUTRAL

    return isinstance(value, str) and value in COST_NEUTRAL.get(name, ())
