"""A secret scanner over everything the suites print: a pytest plugin (loaded by
``tests/conftest.py``) and the matcher the suites' own leak checks use.

Canary keys are registered with :func:`canary` (``canary_env_fixture`` does it for the keys it
sets). After each phase of each test (setup, call, teardown) the scanner reads what the test
printed (captured stdout and stderr), what was logged (the captured log section), the failure
report, and every text the test collected with :func:`collect` (``canary.texts_of`` and
``canary.leaks`` collect what they are given). A canary found there, whole, as a fragment of
:data:`FRAGMENT` characters or more, or escaped (backslash, JSON, URL, HTML, base64 at any
alignment), fails the test; the report shows where, masked, never the canary itself.

It also flags text shaped like a well-known provider key or token (``sk-proj-...``,
``hf_...``, ``AIza...``, ``Bearer <token>``, a JWT...), canary or not: a key a user pasted into
a field that is not a secret must not show either.

The matcher is written independently of ``squirrel_models.secrets`` and
``squirrel_models.keyshapes`` (it tries every start where a piece of a canary can be instead of searching
anchors, and tells a key by its token's prefix and length instead of one regular expression),
so a bug in the library's redaction cannot hide a leak from it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

__all__ = ["FRAGMENT", "canary", "collect", "find", "mask", "scanned"]

FRAGMENT = 8
_grams: dict[str, str] = {}  # every FRAGMENT-long piece of every form -> the canary's label
_canaries: dict[str, str] = {}  # canary -> label
#: A piece of FRAGMENT characters covers, whatever its start, one run of _STEP characters that
#: starts at a multiple of _STEP: only where such a run is part of a piece can one start.
_STEP = FRAGMENT // 2
_quarters: set[str] = set()  # every _STEP-long part of every piece
_collected: list[str] = []
#: Texts scanned and leaks found since the session started (for the figures).
scanned = {"texts": 0, "chars": 0, "leaks": 0}


def _forms(value: str) -> set[str]:
    forms = {value, value.strip(), value.encode("unicode_escape").decode(), json.dumps(value)[1:-1],
             quote(value, safe=""), quote(value), quote_plus(value), html.escape(value)}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in list(forms)}
    forms |= {f.replace("\\", "\\\\") for f in list(forms)}
    for prefix in ("", ":", "u:", "us:"):  # base64 of "user:key" at each alignment
        enc = base64.b64encode((prefix + value).encode()).decode()
        skip = (len(prefix) + 2) // 3 * 4  # characters that depend on the prefix
        core = enc[skip:-4]  # and on what follows the key
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return {f for f in forms if len(f) >= FRAGMENT}


def canary(value: str, label: str | None = None) -> str:
    """Register ``value`` as a canary (returned, for use as a constant)."""
    if value not in _canaries:
        label = label or f"canary #{len(_canaries) + 1}"
        _canaries[value] = label
        for form in _forms(value):
            for i in range(len(form) - FRAGMENT + 1):
                gram = form[i:i + FRAGMENT]
                _grams.setdefault(gram, label)
                _quarters.update(gram[k:k + _STEP] for k in range(FRAGMENT - _STEP + 1))
    return value


def collect(*texts: str) -> None:
    """Add texts a test produced to those scanned when its phase ends."""
    _collected.extend(t for t in texts if isinstance(t, str))


#: prefix of a provider's key -> the shortest token (prefix included) that counts as one
_KEY_PREFIXES = {"sk-": 23, "sk_live_": 18, "sk_test_": 18, "rk_live_": 18, "hf_": 33, "gsk_": 44,
                 "xai-": 44, "AIza": 39, "ghp_": 40, "gho_": 40, "ghs_": 40, "github_pat_": 33,
                 "glpat-": 26, "AKIA": 20, "ASIA": 20, "xoxb-": 15, "xoxp-": 15, "xoxa-": 15}
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_BEARER_TOKEN = re.compile(r"[Bb]earer[ \t]+([A-Za-z0-9._~+/-]{16,}=*)")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.ey[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*")


#: every prefix at once: most tokens start with none, and one C call says so (the suites
#: scan millions of characters; the loop below took most of the scanner's time)
_ANY_PREFIX = tuple(_KEY_PREFIXES)
_SHORTEST = min(_KEY_PREFIXES.values())


def _key_like(token: str) -> bool:
    if len(token) < _SHORTEST or not token.startswith(_ANY_PREFIX):
        return False
    for prefix, shortest in _KEY_PREFIXES.items():
        if token.startswith(prefix) and len(token) >= shortest:
            rest = token[len(prefix):]
            if prefix == "sk-":  # hyphenated names start so too: random base62 has all three
                return (any(c.isdigit() for c in rest) and any(c.isupper() for c in rest)
                        and any(c.islower() for c in rest))
            if prefix in ("AKIA", "ASIA"):
                return len(token) == 20 and all(c.isupper() or c in "234567" for c in rest)
            return True
    return False


def key_shaped(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of ``text`` shaped like a provider's key or a token."""
    found = [m.span() for m in _TOKEN.finditer(text) if _key_like(m.group())]
    found += [m.span(1) for m in _BEARER_TOKEN.finditer(text) if any(c.isdigit() for c in m.group(1))]
    found += [m.span() for m in _JWT.finditer(text)]
    return sorted(found)


def _runs(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, label) of each run of ``text`` made of canary pieces or shaped like a key."""
    shaped = [(s, e, "key-shaped text") for s, e in key_shaped(text)]
    yield from sorted([*_canary_runs(text), *shaped])


def _canary_runs(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, label) of each run of ``text`` made of canary pieces."""
    start = end = -1
    label = ""
    last = len(text) - FRAGMENT
    for i in _candidates(text, last):
        hit = _grams.get(text[i:i + FRAGMENT])
        if hit is None:
            continue
        if i <= end:
            end = i + FRAGMENT
        else:
            if start >= 0:
                yield start, end, label
            start, end, label = i, i + FRAGMENT, hit
    if start >= 0:
        yield start, end, label


def _candidates(text: str, last: int) -> Iterator[int]:
    """The starts (in order, up to ``last``) where a piece may be: every start whose piece
    holds a run of the aligned grid found in ``_quarters`` (a fourth of the lookups of trying
    every start; the same places)."""
    step = _STEP
    for j in range(0, last + step, step):
        if text[j:j + step] in _quarters:
            yield from range(max(0, j - step + 1), min(j, last) + 1)


def find(text: str) -> list[str]:
    """Where ``text`` shows a canary: one masked description per place."""
    scanned["texts"] += 1
    scanned["chars"] += len(text)
    out = []
    for s, e, label in _runs(text):
        out.append(f"{label} ({e - s} characters) at {s}: ...{mask(text[max(0, s - 40):s])}[MASKED]"
                   f"{mask(text[e:e + 40])}...")
    scanned["leaks"] += len(out)
    return out


def mask(text: str) -> str:
    """``text`` with every canary run and key-shaped run replaced by ``[MASKED]``."""
    out, last = [], 0
    for s, e, _ in _runs(text):
        if e <= last:
            continue
        out += [text[last:max(s, last)], "[MASKED]"]
        last = e
    return "".join([*out, text[last:]])


def leaky(texts: Iterable[str]) -> list[str]:
    """The texts (masked) that show a canary."""
    return [mask(t) for t in texts if find(t)]


# --- the pytest plugin ---------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    found: list[str] = []
    sections = []
    for title, content in report.sections:
        if title.endswith(f" {report.when}"):
            found += [f"{title}: {f}" for f in find(content)]
        sections.append((title, mask(content)))
    report.sections = sections
    if report.longrepr is not None:
        text = str(report.longrepr)
        hits = find(text)
        if hits:
            found += [f"failure report: {f}" for f in hits]
            report.longrepr = mask(text)
    texts, _collected[:] = list(_collected), []
    for t in texts:
        found += [f"collected text: {f}" for f in find(t)]
    if found:
        report.outcome = "failed"
        head = f"secret scanner: a canary key showed in {len(found)} place(s) during {report.when}:\n"
        previous = f"\n\n{report.longrepr}" if report.longrepr is not None else ""
        report.longrepr = head + "\n".join(f"  {f}" for f in found[:20]) + previous


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if scanned["texts"]:
        terminalreporter.write_line(
            f"secret scanner: {len(_canaries)} canary key(s); {scanned['texts']} texts "
            f"({scanned['chars']} characters) scanned; {scanned['leaks']} leak(s)")
