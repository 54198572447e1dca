"""Scoring rules: named functions of (model card, requirements, live stats, request shape)
to a score in [0, 1]. The selector combines them as a weighted mean.

A rule declares what it reads (``uses``) so the selector can cache scores that cannot change:
a rule that reads neither ``stats`` nor ``request`` is computed once per model and
requirements.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping
from decimal import Decimal
from operator import attrgetter

import attrs

from .errors import PluginError, shown
from .stats import ModelStats
from .trusted import builder
from .types import AIRequest, ModelCard, ModelRequirements, TokenCount

__all__ = ["POLICIES", "RequestShape", "ScoringRule", "policy_weights"]


@attrs.frozen(slots=True)
class RequestShape:
    """The size of the request being routed: prompt tokens (an upper bound unless ``exact``)
    and the output tokens asked for (None: at least one).

    A model is excluded only when the request surely does not fit it. When the upper bound
    would exclude a model, the selector calls ``recount`` for the model's own count (an ``int``
    or an exact :class:`TokenCount`; None or an inexact count: no tokenizer knows the model)
    and, failing that, uses ``prompt_lower``, a count no tokenizer goes below: no model is
    excluded on a guess. A fit that is only possible (the upper bound does not fit, the lower
    bound does) is kept, and the ``context`` rule scores its headroom 0.
    """

    prompt_tokens: int = 0
    max_output_tokens: int | None = None
    exact: bool = True
    recount: Callable[[ModelCard], int | TokenCount | None] | None = attrs.field(
        default=None, eq=False)
    prompt_lower: int = 0
    #: The request being routed (None: a ranking sized for no request), for checks that need
    #: more than its size: the rate limits that can never admit it (``ratefit``).
    request: AIRequest | None = attrs.field(default=None, eq=False)

    def needed(self, card: ModelCard) -> int:
        """Prompt plus output tokens, with the prompt's upper bound (the same for every card;
        the argument is kept for symmetry with :meth:`needed_at_least`)."""
        out = self.max_output_tokens if self.max_output_tokens is not None else 1
        return self.prompt_tokens + out

    def needed_at_least(self, card: ModelCard) -> tuple[int, bool]:
        """Prompt plus output tokens the request surely needs on ``card``, and whether that is
        the exact count: the model's own count when a tokenizer knows it, else the lower
        bound."""
        out = self.max_output_tokens if self.max_output_tokens is not None else 1
        if self.exact:
            return self.prompt_tokens + out, True
        lower = min(self.prompt_lower, self.prompt_tokens) + out
        if lower > card.context_window:
            # Surely too long: not counted (a 10 MB prompt took a tokenizer 16 s, holding
            # the model's tokenizer from every other request meanwhile).
            return lower, False
        if self.recount is not None:
            count = self.recount(card)
            if isinstance(count, int):
                return count + out, True
            if count is not None and count.exact:
                return count.tokens + out, True
        return lower, False

    def surely_exceeds(self, card: ModelCard) -> bool:
        """Whether even the prompt's lower bound (no tokenizer goes below it) and the output
        do not fit ``card``'s window: no count can change that."""
        out = self.max_output_tokens if self.max_output_tokens is not None else 1
        return min(self.prompt_lower, self.prompt_tokens) + out > card.context_window

    def needed_exact(self, card: ModelCard) -> int:
        """The first half of :meth:`needed_at_least` (kept for callers of earlier versions)."""
        return self.needed_at_least(card)[0]


#: A :class:`RequestShape` as the manager builds one per request (see ``trusted.builder``).
new_shape = builder(RequestShape)


RuleFn = Callable[[ModelCard, ModelRequirements, ModelStats, RequestShape], float]


#: What a rule may read besides the card and requirements (``"request"``: the RequestShape).
USES = frozenset({"stats", "request"})


def _names(value: Iterable[str]) -> frozenset[str]:
    # A name the selector does not know would leave the rule cached on what it reads: stale scores.
    if isinstance(value, str):  # frozenset("stats") is {"s", "t", "a"}
        raise PluginError(f"ScoringRule uses: expected a set of names, got the string {value!r}: write {{{value!r}}}")
    names = frozenset(value)
    if unknown := names - USES:
        raise PluginError(f"ScoringRule uses: unknown {', '.join(map(repr, sorted(unknown)))}; it lists what the rule "
                          f"reads of 'stats' and 'request' (the RequestShape argument)")
    return names


@attrs.frozen
class ScoringRule:
    """A named scoring rule with its default weight.

    ``fn`` returns a score in [0, 1] (clamped if outside). ``uses`` lists which of
    ``"stats"`` and ``"request"`` the rule reads; a rule with neither is cached.

    ``card_key`` is an optional speed hint for a rule that reads the request but not the
    stats: the part of the card its score depends on (``context_window`` for the context
    rule). The selector then calls ``fn`` once per distinct key per request instead of once
    per model; the scores must be the same either way.
    """

    name: str
    fn: RuleFn
    default_weight: float = 1.0
    uses: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    description: str = ""
    card_key: Callable[[ModelCard], Hashable] | None = attrs.field(default=None, eq=False)


# --- built-in rules ---------------------------------------------------------------------

REF_COST_PER_1K = Decimal("0.01")
REF_LATENCY_MS = 1000.0


def cost_score(card: ModelCard, req: ModelRequirements, stats: ModelStats,
               shape: RequestShape) -> float:
    """Cheaper is better: 1 for free, 0.5 at the reference price, 0 for an unknown price.

    The reference is the requirement's ``max_cost_per_1k_tokens``, else $0.01 per 1k tokens.
    """
    if card.price is None:
        return 0.0
    ref = req.max_cost_per_1k_tokens or REF_COST_PER_1K
    return float(ref / (ref + card.price.per_1k_max)) if ref else 0.0


def latency_score(card: ModelCard, req: ModelRequirements, stats: ModelStats,
                  shape: RequestShape) -> float:
    """Faster is better: observed latency (else the card's prior), scaled by queue depth, so a
    busy local model loses to an idle one. 0.5 at the reference latency; when latency is not
    known yet, 0.5 for an idle model, less the deeper its queue."""
    lat = stats.latency_ms if stats.latency_ms is not None else card.latency_ms
    if lat is None:
        return 0.5 / (1.0 + stats.queue_depth)
    effective = lat * (1.0 + stats.queue_depth)
    ref = req.max_latency_ms or REF_LATENCY_MS
    return ref / (ref + effective)


def quality_score(card: ModelCard, req: ModelRequirements, stats: ModelStats,
                  shape: RequestShape) -> float:
    """The card's quality prior; 0.5 when it has none."""
    return 0.5 if card.quality is None else card.quality


def context_score(card: ModelCard, req: ModelRequirements, stats: ModelStats,
                  shape: RequestShape) -> float:
    """Room left in the context window after the request (its prompt's upper bound): more
    headroom, fewer overflows; 0 when the request may not fit at all."""
    return max(0.0, 1.0 - shape.needed(card) / card.context_window)


def reliability_score(card: ModelCard, req: ModelRequirements, stats: ModelStats,
                      shape: RequestShape) -> float:
    """Recent success rate (moving average); 0 while the circuit breaker is open."""
    return 0.0 if stats.breaker_open else stats.success_rate


def tags_score(card: ModelCard, req: ModelRequirements, stats: ModelStats,
               shape: RequestShape) -> float:
    """Share of the requirement's ``prefer_tags`` the model carries (1 when none asked)."""
    if not req.prefer_tags:
        return 1.0
    return len(req.prefer_tags & card.tags) / len(req.prefer_tags)


BUILTIN_RULES: tuple[ScoringRule, ...] = (
    ScoringRule("cost", cost_score, 1.0, description=cost_score.__doc__ or ""),
    ScoringRule("latency", latency_score, 1.0, {"stats"}, latency_score.__doc__ or ""),
    ScoringRule("quality", quality_score, 1.0, description=quality_score.__doc__ or ""),
    ScoringRule("context", context_score, 0.5, {"request"}, context_score.__doc__ or "",
                card_key=attrgetter("context_window")),
    ScoringRule("reliability", reliability_score, 1.0, {"stats"},
                reliability_score.__doc__ or ""),
    ScoringRule("tags", tags_score, 0.5, description=tags_score.__doc__ or ""),
)


_BUILTIN_FNS = frozenset(r.fn for r in BUILTIN_RULES)


def checked(rule: ScoringRule) -> ScoringRule:
    """``rule`` with its ``fn`` guarded, unless it is a built-in: a score that is not a number
    (None, a string) or an exception is a :class:`PluginError` naming the rule and the model,
    never a ``TypeError`` out of a ranking; a ``Decimal`` or a ``Fraction`` is read as a float.
    NaN stays NaN (the selector counts it as 0, as documented)."""
    if rule.fn in _BUILTIN_FNS:
        return rule  # trusted and on the hot path: no wrapper
    fn, name = rule.fn, rule.name

    def guarded(card: ModelCard, req: ModelRequirements, stats: ModelStats,
                shape: RequestShape) -> float:
        try:
            score = fn(card, req, stats, shape)
        except Exception as exc:
            raise PluginError(f"raised {type(exc).__name__} scoring {card.id}: {exc}",
                              plugin=f"scoring rule {name}") from exc
        if isinstance(score, float):
            return score
        if not isinstance(score, bool) and isinstance(score, numbers.Real | Decimal):
            try:  # an int of 400 digits, a signalling Decimal NaN: no float
                return float(score)
            except (OverflowError, ValueError):
                pass
        raise PluginError(f"returned {shown(score)} for {card.id}, not a number in [0, 1]",
                          plugin=f"scoring rule {name}")

    return attrs.evolve(rule, fn=guarded)


# --- named policies ---------------------------------------------------------------------

#: ``[scoring] policy``: the weight of each built-in rule. ``balanced`` (the default) weighs
#: price, speed, quality and health alike; the others let one concern decide and keep small
#: weights on health (a failing model ranks lower), headroom and preferred tags as
#: tie-breakers. ``[scoring.weights]`` overrides single weights of any policy.
POLICIES: Mapping[str, Mapping[str, float]] = {
    "balanced": {r.name: r.default_weight for r in BUILTIN_RULES},
    "cheapest": {"cost": 1.0, "latency": 0.0, "quality": 0.0, "context": 0.1,
                 "reliability": 0.2, "tags": 0.1},
    "fastest": {"cost": 0.0, "latency": 1.0, "quality": 0.0, "context": 0.1,
                "reliability": 0.2, "tags": 0.1},
    "best": {"cost": 0.0, "latency": 0.0, "quality": 1.0, "context": 0.1,
             "reliability": 0.2, "tags": 0.1},
}


def policy_weights(policy: str, available: Iterable[ScoringRule],
                   overrides: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """The weight of every available rule under ``policy`` with ``overrides``, and the names
    of the rules no policy or override names (rules a plugin added), whose weight is then
    their ``default_weight`` under ``balanced`` and 0 under the single-concern policies, so a
    plugin's rule never changes a ``cheapest`` ranking unless configured. The caller reports
    those rules (the manager logs them), so none joins silently."""
    table = POLICIES[policy]
    weights: dict[str, float] = {}
    unnamed: list[str] = []
    for rule in available:
        if rule.name in overrides:
            weights[rule.name] = float(overrides[rule.name])
        elif rule.name in table:
            weights[rule.name] = float(table[rule.name])
        else:
            unnamed.append(rule.name)
            weights[rule.name] = float(rule.default_weight) if policy == "balanced" else 0.0
    return weights, unnamed
