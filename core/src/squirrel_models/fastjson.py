"""JSON on the wire: ``msgspec`` when it is installed (the ``fast`` extra), ``json`` otherwise.

Upstream answers and stream events decode with :func:`json_body`, request bodies built from
checked values encode with :func:`fast_dumps`, and a plugin that knows the shape of an answer
can decode it straight into typed structures with :func:`typed_decoder` (about half the time
of decoding to dicts, with the types checked in C). Each gives ``json``'s values, and whatever
msgspec refuses goes to ``json`` (or, for a typed decoder, to the caller's generic path), which
decides as it would alone: the extra changes how fast, never what.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .errors import MalformedResponse

__all__ = ["available", "fast_dumps", "json_body", "typed_decoder"]

#: ``msgspec.json.decode``, or None without msgspec; filled on first use (tests set it).
_FAST: list[Callable[[Any], Any] | None] = []


def _fast_loads() -> Callable[[Any], Any] | None:
    """``msgspec.json.decode`` when msgspec is installed (the ``fast`` extra), else None. It
    decodes an answer in about a quarter of ``json``'s time, to the same values (integers of
    any size included); what it refuses (NaN, infinities, a byte-order mark, UTF-16, lone
    surrogates, deep nesting) is given to ``json``, which decides as it would alone."""
    if not _FAST:
        try:
            import msgspec.json
        except ImportError:
            _FAST.append(None)
        else:
            _FAST.append(msgspec.json.decode)
    return _FAST[0]


def available() -> bool:
    """Whether msgspec is installed (and not switched off by a test)."""
    return _fast_loads() is not None


def fast_dumps() -> Callable[[Any], bytes] | None:
    """``msgspec.json.encode`` when msgspec is installed, else None: compact UTF-8 JSON of the
    same values as ``json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()``
    (floats may be spelled differently: ``1e-7`` for ``1e-07``). It writes NaN and the
    infinities as ``null`` where ``json`` writes ``NaN``, and raises ``TypeError`` or
    ``ValueError`` for what it cannot encode: callers use it for bodies whose values they
    built and checked, and fall back to ``json`` on those errors."""
    if _fast_loads() is None:
        return None
    import msgspec.json

    return msgspec.json.encode


def typed_decoder(make: Callable[[], Any]) -> Callable[[bytes], Any] | None:
    """A decoder of bytes into the msgspec type ``make()`` returns (``make`` imports msgspec
    and defines the type, so it runs only when msgspec is installed), else None. The decoder
    raises ``ValueError`` (msgspec's ``DecodeError`` and ``ValidationError``) or
    ``RecursionError`` for a body that is not of the type: the caller then reads it with
    :func:`json_body` and its own checks, which decide as they would without msgspec."""
    if _fast_loads() is None:
        return None
    import msgspec.json

    return msgspec.json.Decoder(make()).decode


def json_body(data: bytes | bytearray | str, what: str = "body") -> Any:
    """The JSON value of an upstream body or event. Not JSON, not UTF-8, nested too deeply or a
    number too long to read: :class:`MalformedResponse`."""
    fast = _fast_loads()
    if fast is not None:
        try:
            return fast(data)
        except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
            pass  # json decides: it reads some of what msgspec refuses (NaN, UTF-16...)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise MalformedResponse(f"{what} is not valid JSON ({type(exc).__name__})") from None
