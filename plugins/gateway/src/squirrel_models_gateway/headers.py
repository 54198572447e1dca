"""The request headers the gateway reads: each sent once at most, the body's media type, and
the two that set limits for one request (``X-Squirrel-Max-Cost``, ``X-Squirrel-Max-Latency-Ms``);
and the values of the headers it answers with."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TypeVar

from squirrel_models.cards import MAX_CEILING
from squirrel_models.errors import InvalidRequest, shown
from squirrel_models.fieldchecks import read_decimal, read_float
from squirrel_models.secrets import redact_recurring

from .errors import GatewayError

__all__ = ["MAX_COST_HEADER", "MAX_LATENCY_HEADER", "check_content_type", "decimal_header",
           "float_header", "header_value", "request_headers", "request_id_value"]

N = TypeVar("N", Decimal, float)

#: Request headers that set limits for one request.
MAX_COST_HEADER = b"x-squirrel-max-cost"
MAX_LATENCY_HEADER = b"x-squirrel-max-latency-ms"


#: Headers the gateway reads that a request may send once only.
_SINGLE = frozenset({b"authorization", b"content-type", MAX_COST_HEADER, MAX_LATENCY_HEADER})


def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request's headers by (lowercase) name. One the gateway reads sent twice is refused
    (a second ``Authorization`` a 401, another a 400 naming it): which copy counts differs
    between servers, proxies and libraries (the chat route took the last ``Authorization``
    and ``GET /v1/models`` the first: one request, two keys), and a second
    ``X-Squirrel-Max-Cost`` would lift the ceiling a proxy or a client library set."""
    headers: dict[bytes, bytes] = {}
    twice: set[bytes] = set()
    for name, value in raw:
        if name in headers and name in _SINGLE:
            twice.add(name)
        headers[name] = value
    if b"authorization" in twice:
        raise GatewayError(401, "send one Authorization header ('Bearer <key>'), not several",
                           code="invalid_api_key", param="authorization")
    if twice:
        name = min(twice).decode()
        raise GatewayError(400, f"the {name} header was sent more than once; send it once",
                           code="invalid_value", param=name)
    return headers


#: Media types a chat request's body may be sent as. Anything else (``text/plain``, a form, no
#: type at all) is refused before the body is read: those are what a web page can make a
#: browser send to the gateway without asking it first (a "simple" cross-origin request), so
#: a page could otherwise spend the budget of a gateway that serves without keys.
def check_content_type(value: bytes | None) -> None:
    media = (value or b"").split(b";", 1)[0].strip().lower()
    if media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json")):
        return
    raise GatewayError(415, "the request body must be JSON sent with 'Content-Type: "
                       "application/json'", param="content-type", code="unsupported_media_type")


# Within the ceilings ModelRequirements takes (MAX_CEILING): past it the refusal named its
# field (max_request_cost), which the client never sent, instead of the header.
def decimal_header(value: bytes | None, name: bytes) -> Decimal | None:
    return _number(value, name, read_decimal, lambda a: a <= MAX_CEILING,
                   f"must be an amount of US dollars from 0 to {MAX_CEILING:.0e} (such as 0.01)")


def float_header(value: bytes | None, name: bytes) -> float | None:
    return _number(value, name, read_float, lambda n: 0 < n <= MAX_CEILING,
                   f"must be a number of milliseconds > 0, at most {MAX_CEILING:.0e}")


def _number(value: bytes | None, name: bytes, parse: Callable[[str], N],
            valid: Callable[[N], bool], message: str) -> N | None:
    """Header ``name``'s ``value`` parsed by the strict grammar of
    :func:`~squirrel_models.fieldchecks.number_problem` (None when absent): ``1_000``,
    full-width digits, ``1e3``, ``NaN``, a sign are refused, as what is not ``valid``, with an
    InvalidRequest naming the header and saying what is wrong. Only the optional white space
    HTTP allows around a value is taken off."""
    if value is None:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{message}; it holds bytes that are not ASCII", field=name.decode()) from None
    try:
        number = parse(text.strip(" \t"))
    except ValueError as e:
        raise InvalidRequest(f"{message}; {shown(text)} {e}", field=name.decode()) from None
    if not valid(number):
        raise InvalidRequest(f"{message}, got {shown(text)}", field=name.decode())
    return number


def header_value(text: str, limit: int = 600) -> bytes:
    """``text`` as one header line: redacted, no line breaks, ASCII, bounded. The texts of
    these headers recur (a model id, a reason with the same scores): each is searched for
    secrets once (``redact_recurring``), where every answer searched its model and reason
    again (about 30 us a request with one upstream key registered)."""
    clean = redact_recurring(text).replace("\r", " ").replace("\n", " ")
    return clean[:limit].encode("ascii", "replace")


_HEX_ID = re.compile(r"[0-9a-f]{1,64}")


def request_id_value(request_id: str) -> bytes:
    """``X-Request-Id``: the library's request ids are hex digits (``new_request_id``), new
    for every request, so remembering their redaction would only evict the texts that recur:
    they are sent as they are, as in the body's ``id``; any other id as any other header."""
    if _HEX_ID.fullmatch(request_id):
        return request_id.encode("ascii")
    return header_value(request_id)
