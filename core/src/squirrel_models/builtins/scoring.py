"""Built-in scoring rules, registered like a plugin's."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..scoring import BUILTIN_RULES, ScoringRule


@hookimpl
def register_scoring_rules() -> list[ScoringRule]:
    return list(BUILTIN_RULES)
