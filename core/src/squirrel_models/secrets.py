"""Secrets (API keys, tokens, passwords), and the one redaction point for all text that leaves
the library.

A :class:`Secret` hides its value from ``repr``/``str``/formatting; the value is read only with
:meth:`Secret.reveal`, at the one place it is sent (an HTTP header). Every secret created is
also registered, so that the functions below can find it in any text:

- :func:`redact` replaces every registered secret in a text with ``***``: the whole value, any
  **fragment** of it at least :data:`FRAGMENT` (8) characters long (a server echoing the key
  minus its last two characters, or its first half) and its **escaped forms**: backslash
  escapes (``repr``, ``\\n`` for control characters), JSON escapes, URL-encoding (``%2B``,
  ``+`` for spaces), HTML escapes, and base64 at any alignment (so ``Basic
  base64("user:key")`` is caught too). Fragments of escaped forms are matched as well.
  Secrets shorter than 4 characters are not registered (they would mask ordinary words); one
  of 4 to 7 characters is matched whole only. A composite secret (a database URL: ``opaque=
  False``) is matched whole and escaped, not by fragments (they would mask host names); the
  passwords it embeds (``scheme://user:PW@host``, ``?password=PW``, ``password=PW`` of a
  key=value string; as written and percent-decoded) are registered on their own, found by
  their shape alone, so even a string its driver cannot parse (whose error quotes the piece it
  choked on) never shows them.
  It also masks, registered or not, text **shaped like a well-known provider key or token**
  (``sk-proj-...``, ``hf_...``, ``AIza...``, ``Bearer <token>``, a JWT; see
  :mod:`squirrel_models.keyshapes`): a key pasted into a field that is not a secret (the
  model, a header name, a budget scope, request metadata, ``api_key_env`` itself) is never
  echoed by the error naming that field, nor by a log line or a metric label. By where it
  stands, it also masks the value after a credential's name (``api_key=``, ``password:``,
  ``"token": "``, ``Authorization: Bearer``...) and the password of any URL's userinfo
  (``redis://:PW@host``), registered or not.
- :func:`sanitize` makes an exception safe to show, in place, with its whole cause/context
  chain and the errors of its ``attempts``: our errors' arguments are redacted (and
  :class:`~squirrel_models.errors.SquirrelError` redacts its ``str`` and ``repr`` whenever they
  are shown), and every foreign exception on the chain (an ``aiohttp.ClientResponseError``
  holding the request's headers, say) is replaced by a stand-in of the same class name that
  keeps only its redacted message, simple attributes and traceback.
- Log records: once this module is imported, a log-record factory redacts every record created
  in the process (ours and third-party libraries' alike: httpx, httpcore, aiohttp,
  huggingface_hub, psycopg), message, arguments, traceback and stack included.
  :class:`RedactingFilter` does the same as a filter, for handlers of your own.
- The CLI writes through :class:`RedactingWriter`; metrics labels and span attributes go
  through :func:`redact` too.

API keys with whitespace, control or non-ASCII characters (a trailing newline pasted with the
key) are a :class:`~squirrel_models.errors.ConfigError` naming the field, without showing it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import inspect
import json
import logging
import os
import re
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import IO, Any, TypeVar
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import attrs

from .errors import ConfigError, SquirrelError
from .keyshapes import PREFIXES, contains_key_shape, key_spans, open_label

__all__ = ["FRAGMENT", "MASK", "RedactedError", "RedactingFilter", "RedactingWriter", "Secret",
           "contains_secret", "embedded_passwords", "guarded", "redact", "redact_recurring",
           "register", "sanitize"]

MASK = "***"
#: The shortest run of a registered secret that is masked (shorter secrets: the whole value).
FRAGMENT = 8
_ANCHOR = 4  # every run of >= FRAGMENT characters holds one aligned 4-character anchor
#: What an environment variable's name looks like by convention; anything else is not echoed.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")


class _Registry:
    """The forms of every registered secret, indexed by their aligned 4-character anchors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: set[tuple[str, bool]] = set()
        #: anchor -> [(form, offset of the anchor in the form, shortest run to mask)]
        self.anchors: dict[str, list[tuple[str, int, int]]] = {}
        self.forms: set[str] = set()
        self.version = 0
        self.longest = 0

    def add(self, value: str, *, opaque: bool) -> None:
        if not opaque:
            for password in embedded_passwords(value):
                self.add(password, opaque=True)
        if len(value) < 4 or (value, opaque) in self.values:
            return
        with self.lock:
            if (value, opaque) in self.values:
                return
            anchors = dict(self.anchors)  # copy on write: readers never lock
            for form in _forms(value, opaque=opaque):
                if len(form) < 4 or form in self.forms:
                    continue
                self.forms.add(form)
                run = min(FRAGMENT, len(form)) if opaque else len(form)
                for k in range(0, len(form) - _ANCHOR + 1, _ANCHOR):
                    anchors.setdefault(form[k:k + _ANCHOR], []).append((form, k, run))
                self.longest = max(self.longest, len(form))
            self.anchors = anchors
            self.values.add((value, opaque))
            self.version += 1
        _install_log_factory()


_registry = _Registry()

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)


def embedded_passwords(value: str) -> set[str]:
    """The passwords a connection string holds, found by shape alone (no driver's parser, so
    a string the driver refuses is covered too): the userinfo's ``scheme://user:PW@host`` (up
    to the last ``@`` before the query, and up to the last one: a password may hold an
    unencoded ``/``, ``?`` or ``@``; too much masked beats too little), ``?password=PW`` /
    ``&password=PW``, and ``password=PW`` of a libpq key=value string (quoted or not); each as
    written and percent-decoded."""
    found: set[str] = set()
    scheme = _SCHEME.match(value)
    if scheme:
        rest = value[scheme.end():]
        query = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
        for at in {rest.rfind("@", 0, query), rest.rfind("@")} - {-1}:
            _user, colon, password = rest[:at].partition(":")
            if colon:
                found.add(password)
        found.update(m.group(1) for m in _QUERY_PASSWORD.finditer(rest))
    else:
        for m in _KV_PASSWORD.finditer(value):
            raw = m.group(1)
            if raw.startswith("'"):
                raw = re.sub(r"\\(.)", r"\1", raw[1:].removesuffix("'"))
            found.add(raw)
    return {form for password in found for form in (password, unquote(password),
                                                     unquote_plus(password)) if form}


def _b64_cores(raw: bytes) -> Iterable[str]:
    """The base64 text that ``raw`` encodes to wherever it sits in a longer input (``user:key``):
    for each of the three alignments, the groups made of its bytes alone."""
    for skip in range(3):
        seg = raw[skip:]
        seg = seg[: len(seg) // 3 * 3]
        if seg:
            core = base64.b64encode(seg).decode()
            yield core
            yield core.replace("+", "-").replace("/", "_")  # urlsafe


def _forms(value: str, *, opaque: bool) -> set[str]:
    """``value`` and the ways it is written when escaped."""
    forms = {value, value.strip()}
    forms.add(value.encode("unicode_escape").decode("ascii"))  # \n, \x01, \u00e9
    forms.add(repr(value)[1:-1])
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    for q in (quote(value, safe=""), quote(value), quote_plus(value)):
        forms.add(q)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), q))
    forms.add(html.escape(value))
    forms |= {f.replace("\\", "\\\\") for f in list(forms) if "\\" in f}  # escaped twice (repr of repr)
    if opaque:
        forms.update(_b64_cores(value.encode("utf-8", "surrogatepass")))
    return forms


def register(value: str, *, opaque: bool = True) -> None:
    """Register ``value`` as a secret without wrapping it (a :class:`Secret` does this itself).
    ``opaque``: a token whose every fragment is secret; False for a composite string (a URL)."""
    _registry.add(value, opaque=opaque)


def _bad_characters(value: str) -> bool:
    """Whether a key holds what no HTTP header carries as it is: whitespace, control or
    non-ASCII characters (a newline pasted with it, a BOM, a no-break space)."""
    return not (value.isascii() and value.isprintable()) or " " in value


@attrs.frozen(repr=False)
class Secret:
    """A secret string. ``repr``, ``str`` and f-strings show ``***``.

    ``opaque`` (the default): a key or token, matched by fragments too; False for a composite
    string such as a database URL, matched whole (see the module docstring)."""

    _value: str = attrs.field(alias="value")
    _opaque: bool = attrs.field(default=True, alias="opaque", kw_only=True)

    def __attrs_post_init__(self) -> None:
        register(self._value, opaque=self._opaque)

    @classmethod
    def from_env(cls, name: str, *, field: str, opaque: bool = True) -> Secret:
        """Read the variable ``name``; a missing or empty one is a :class:`ConfigError` on
        ``field``, and so is an ``opaque`` value holding whitespace or control characters."""
        value = os.environ.get(name)
        if not value:
            if not _ENV_NAME.fullmatch(name) or contains_key_shape(name):  # AKIA... is both
                # Not a variable's name: most likely the key itself, pasted here. Never echo it.
                register(name)
                raise ConfigError("must be the name of an environment variable (such as "
                                  "OPENAI_API_KEY) holding the key, not the key itself; the value "
                                  "given is not shown", field=field)
            raise ConfigError(f"environment variable {name} is "
                              + ("set but empty" if name in os.environ else "not set"), field=field)
        if opaque and _bad_characters(value):
            register(value.strip())  # in case anything shows it anyway
            raise ConfigError(f"the value of environment variable {name} contains whitespace, "
                              "control or non-ASCII characters (a newline pasted with the key?); "
                              "the value is not shown", field=field)
        return cls(value, opaque=opaque)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)


# --- text ------------------------------------------------------------------------------------


def _grams(text: str) -> set[str]:
    return {text[i:i + _ANCHOR] for i in range(len(text) - _ANCHOR + 1)}


def _spans(text: str, anchors: dict[str, list[tuple[str, int, int]]]) -> list[tuple[int, int]]:
    """The runs of ``text`` that match a registered form over at least its shortest run."""
    found: list[tuple[int, int]] = []
    if len(text) > 64 * len(anchors):  # long text, few anchors: search for each
        hits = [a for a in anchors if a in text]
    else:
        hits = [a for a in _grams(text) if a in anchors]
    n = len(text)
    for anchor in hits:
        p = text.find(anchor)
        while p != -1:
            for form, k, run in anchors[anchor]:
                i, j = p, k
                while i > 0 and j > 0 and text[i - 1] == form[j - 1]:
                    i, j = i - 1, j - 1
                e, f = p + _ANCHOR, k + _ANCHOR
                while e < n and f < len(form) and text[e] == form[f]:
                    e, f = e + 1, f + 1
                if e - i >= run:
                    found.append((i, e))
            p = text.find(anchor, p + 1)
    return found


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    spans.sort()
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _all_spans(text: str) -> list[tuple[int, int]]:
    """The runs of ``text`` to mask: registered secrets and key-shaped text."""
    anchors = _registry.anchors
    spans = _spans(text, anchors) if anchors else []
    return spans + key_spans(text)


def redact(text: str) -> str:
    """``text`` with every registered secret, fragment of one, or escaped form of one, and
    every run shaped like a well-known key or token, replaced by ``***`` (see the module
    docstring for what is matched)."""
    if len(text) < 4:
        return text
    spans = _all_spans(text)
    if not spans:
        return text
    out, last = [], 0
    for s, e in _merge(spans):
        out += [text[last:s], MASK]
        last = e
    out.append(text[last:])
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _redacted(text: str, version: int) -> str:
    return redact(text)


def redact_recurring(text: str) -> str:
    """:func:`redact` for text that comes again and again (model ids, metric labels, response
    header values): each answer is remembered until the next secret is registered (the
    registry's version is part of the key), so a recurring text is searched once."""
    return _redacted(text, _registry.version)


def contains_secret(text: str) -> bool:
    """Whether :func:`redact` would change ``text``."""
    anchors = _registry.anchors
    return len(text) >= 4 and ((bool(anchors) and bool(_spans(text, anchors))) or contains_key_shape(text))


# --- exceptions ----------------------------------------------------------------------------


class RedactedError(Exception):
    """What a foreign exception on the cause chain of one of our errors is replaced with.

    A subclass is made per foreign class, named like it (and deriving from it when Python
    allows, so ``isinstance`` still holds): it shows the original's message, redacted, and
    keeps its simple attributes (strings redacted) and traceback, never objects such as the
    request it was about (whose headers hold the key)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> Any:
        return (RedactedError, (str(self),))


_stand_in_classes: dict[type, type[BaseException]] = {}
_SIMPLE = (str, int, float, bool, type(None))


def _stand_in_class(cls: type[BaseException]) -> type[BaseException]:
    made = _stand_in_classes.get(cls)
    if made is None:
        ns = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
              "__str__": RedactedError.__str__, "__repr__": RedactedError.__repr__,
              "__reduce__": RedactedError.__reduce__}
        try:
            made = type(cls.__name__, (RedactedError, cls), ns)
        except Exception:  # a final class, a metaclass or a layout that refuses subclasses
            made = type(cls.__name__, (RedactedError,), ns)
        assert issubclass(made, BaseException)
        _stand_in_classes[cls] = made
    return made


def _stand_in(exc: BaseException) -> BaseException:
    try:
        message = redact(str(exc))
    except Exception:
        message = f"<{type(exc).__name__} whose message could not be shown>"
    new: BaseException | None = None
    if isinstance(exc, BaseExceptionGroup):
        with contextlib.suppress(Exception):
            new = exc.derive([_stand_in(e) for e in exc.exceptions])
    if new is None:
        cls = _stand_in_class(type(exc))
        try:
            new = cls.__new__(cls)
        except Exception:  # a __new__ that wants arguments: the plain stand-in, same name
            new = RedactedError.__new__(type(cls.__name__, (RedactedError,), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__}))
        new.args = (message,)
        with contextlib.suppress(Exception):
            for k, v in vars(exc).items():
                if isinstance(v, _SIMPLE) and not k.startswith("__"):
                    new.__dict__[k] = redact(v) if isinstance(v, str) else v  # no descriptors run
    new.__traceback__ = exc.__traceback__
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        new.__notes__ = [redact(str(n)) for n in notes]
    new.__cause__ = exc.__cause__
    new.__context__ = exc.__context__
    new.__suppress_context__ = exc.__suppress_context__
    return new


def _scrub_args(exc: BaseException) -> None:
    try:
        args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        if args != exc.args:
            exc.args = args
    except Exception:
        pass
    for k in ("server_message", "partial_text"):
        v = getattr(exc, k, None)
        if isinstance(v, str) and k in getattr(exc, "__dict__", {}) and contains_secret(v):
            with contextlib.suppress(Exception):
                setattr(exc, k, redact(v))


def _ours(exc: BaseException) -> bool:
    return isinstance(exc, SquirrelError | RedactedError)


def sanitize(exc: BaseException) -> BaseException:
    """Make ``exc`` safe to show, in place, and return it: its arguments redacted, every
    foreign exception on its cause/context chain (and on the chains of the errors in its
    ``attempts``) replaced by a redacted stand-in. Foreign exceptions at the top are only
    redacted in place (their class is kept: the caller catches it by type)."""
    seen: set[int] = set()
    made: dict[int, BaseException] = {}  # one stand-in per foreign exception (cause and context)
    todo = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        _scrub_args(cur)
        for link in ("__cause__", "__context__"):
            nxt = getattr(cur, link)
            if nxt is None:
                continue
            if not _ours(nxt):
                if id(nxt) not in made:
                    made[id(nxt)] = _stand_in(nxt)
                nxt = made[id(nxt)]
                with contextlib.suppress(Exception):
                    setattr(cur, link, nxt)
            todo.append(nxt)
        for attempt in getattr(cur, "attempts", ()) or ():
            err = getattr(attempt, "error", None)
            if isinstance(err, BaseException):
                todo.append(err)
        if isinstance(cur, BaseExceptionGroup):
            todo.extend(cur.exceptions)
    return exc


F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    """Decorate a public function or coroutine function so that the :class:`SquirrelError` it
    raises leaves through :func:`sanitize` (after it is raised: its chain is then complete)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except SquirrelError as exc:
                sanitize(exc)
                raise

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SquirrelError as exc:
            sanitize(exc)
            raise

    return run  # type: ignore[return-value]


# --- log records ---------------------------------------------------------------------------


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging would print msg and args as they are
        message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
    else:
        clean = redact(message)
        if clean != message or (record.args and contains_secret(repr(record.args))):
            record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters reuse exc_text when set, so the traceback is scrubbed once here.
        record.exc_text = redact("".join(traceback.format_exception(record.exc_info[1])).rstrip("\n"))
        sanitize(record.exc_info[1])
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_factory_lock = threading.Lock()


def _install_log_factory() -> None:
    """Redact every log record made in this process, once a secret is registered."""
    with _factory_lock:
        previous = logging.getLogRecordFactory()
        if getattr(previous, "_squirrel_redacts", False):
            return

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _scrub_record(record)  # registered secrets and key-shaped text alike
            return record

        factory._squirrel_redacts = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs known secrets from a record's message, arguments and
    traceback. Records are already redacted when made (see the module docstring); this filter
    covers records made before the first secret was registered or by another factory."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record)
        return True


# --- output streams --------------------------------------------------------------------------


class RedactingWriter:
    """A text stream that redacts what is written to ``stream`` (the CLI's stdout and stderr).

    A secret written in pieces (a streamed answer) is still caught: the end of what was
    written is held back while it could be the start of a secret, and written when the next
    text shows it is not, at a newline, or on :meth:`release`."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._held = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            return int(self.stream.write(text))
        pending = self._held + text
        keep = self._hold_back(pending)
        ready, self._held = pending[: len(pending) - keep], pending[len(pending) - keep:]
        if ready:
            self.stream.write(redact(ready) if keep == 0 else _redact_prefix(ready, pending))
        return len(text)

    def _hold_back(self, text: str) -> int:
        """How many characters at the end of ``text`` may be the start of a secret's run."""
        shaped = _key_start(text)
        forms = _registry.forms
        if not forms:
            return shaped
        for size in range(min(len(text), _registry.longest), shaped, -1):
            tail = text[-size:]
            if any(tail in f for f in forms):
                return size
        return shaped

    def release(self) -> None:
        """Write what is held back."""
        held, self._held = self._held, ""
        if held:
            self.stream.write(redact(held))

    def flush(self) -> None:
        self.stream.flush()

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def isatty(self) -> bool:
        return bool(self.stream.isatty())

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":  # bytes would bypass redaction
            raise AttributeError(name)
        return getattr(self.stream, name)


def _redact_prefix(ready: str, pending: str) -> str:
    """The redacted form of ``ready``, a prefix of ``pending``, judged with what follows it."""
    out, last = [], 0
    for s, e in _merge(_all_spans(pending)):
        if s >= len(ready):
            break
        out += [ready[last:s], MASK]
        last = min(e, len(ready))
    out.append(ready[last:])
    return "".join(out)


#: The characters of a key-shaped run, and ``Bearer`` with its blanks just before such a run.
_RUN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~+/=-"
_BEARER_BEFORE = re.compile(r"(?<![A-Za-z0-9_-])(?i:bearer)[ \t]+\Z")
_HELD_RUN = 4096  # the longest run held back


def _key_start(text: str) -> int:
    """How many characters at the end of ``text`` may begin a key-shaped run (a token that
    starts like one, ``Bearer`` and its token, or a credential's name and its value, see
    :func:`~squirrel_models.keyshapes.open_label`): held back by :class:`RedactingWriter`
    until what follows shows whether it is a key. Linear in ``text`` (a regular expression
    anchored at the end backtracked through a long run at each of its starts)."""
    label = open_label(text)
    shaped = _shaped_start(text)
    return shaped if label is None else max(shaped, len(text) - label)


def _shaped_start(text: str) -> int:
    """:func:`_key_start` for the key shapes and ``Bearer``."""
    n = len(text)
    run = len(text.rstrip(_RUN))
    start = max(run, n - _HELD_RUN)
    if start == run:  # the whole run: Bearer may stand before it
        m = _BEARER_BEFORE.search(text, max(0, n - _HELD_RUN - 104), run)
        if m is not None:
            start = m.start()
    if start == n:
        return 0
    tail = text[start:]
    if tail[:6].lower() == "bearer" or (tail[0] in "bB" and tail.lower() in "bearer"):
        return len(tail)
    starts = [0] + [k + 1 for k, c in enumerate(tail) if c in ".~+/="]
    for k in starts:
        token = tail[k:]
        if any(token.startswith(p) or p.startswith(token) for p in PREFIXES if token):
            return len(tail) - k
    return 0


_install_log_factory()  # key-shaped text is masked in every record, before any secret is registered
