"""Model selection: a hard filter, then weighted scoring rules, then a deterministic ranking.

``rank`` returns a :class:`Decision`: every candidate with its total and per-rule scores, and
every excluded model with the reason. The static part of the filter and of the scores (what
depends only on cards and requirements) is cached per requirements; the cache is dropped
whenever a model is registered or removed. Ties are broken by model id, so the same inputs
always give the same ranking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from .errors import CapabilityNotSupported, InvalidRequest
from .scoring import RequestShape, ScoringRule
from .stats import EMPTY, ModelStats, StatsRegistry
from .types import ModelCard, ModelRequirements

__all__ = ["Candidate", "Decision", "ModelSelector", "STANDARD_CAPABILITIES", "STANDARD_FEATURES"]

STANDARD_CAPABILITIES = frozenset({"chat", "completion", "vision", "embedding", "audio"})
STANDARD_FEATURES = frozenset(
    {"tools", "json_mode", "streaming", "system_prompt", "logprobs", "reasoning", "stop"}
)
CACHE_SIZE = 256


@attrs.frozen(slots=True)
class Candidate:
    """A model that passed the hard filter, with its weighted total and each rule's score."""

    card: ModelCard
    score: float
    scores: Mapping[str, float]

    @property
    def model_id(self) -> str:
        return self.card.id


@attrs.frozen
class Decision:
    """Why models were ranked as they were. ``candidates`` best first."""

    candidates: tuple[Candidate, ...]
    excluded: Mapping[str, str]
    weights: Mapping[str, float]
    requirements: ModelRequirements
    cache_hit: bool = False
    duration_s: float = 0.0

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def reason(self) -> str:
        """One line: why the first candidate was chosen."""
        best = self.chosen
        if best is None:
            return "no candidate"
        parts = ", ".join(f"{k} {v:.2f}" for k, v in best.scores.items())
        others = len(self.candidates) - 1
        tail = f"; beat {others} other candidate(s)" if others else "; the only candidate"
        if self.excluded:
            tail += f", {len(self.excluded)} excluded"
        return f"score {best.score:.3f} ({parts}){tail}"

    def explain(self, limit: int = 20) -> str:
        """A text table of the ranking and the exclusions."""
        rules = list(self.weights)
        head = f"{'#':>3}  {'model':<40} {'total':>6}  " + "  ".join(
            f"{r[:11]:>11}" for r in rules)
        lines = [head, f"{'':>3}  {'(weights)':<40} {'':>6}  " + "  ".join(
            f"{self.weights[r]:>11.2f}" for r in rules)]
        for i, c in enumerate(self.candidates[:limit], 1):
            lines.append(f"{i:>3}  {c.card.id:<40} {c.score:>6.3f}  " + "  ".join(
                f"{c.scores.get(r, 0.0):>11.3f}" for r in rules))
        if len(self.candidates) > limit:
            lines.append(f"     ... {len(self.candidates) - limit} more")
        if self.excluded:
            lines.append("excluded:")
            lines.extend(f"     {k}: {v}" for k, v in sorted(self.excluded.items())[:limit])
            if len(self.excluded) > limit:
                lines.append(f"     ... {len(self.excluded) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "candidates": [{"model": c.card.id, "score": round(c.score, 6),
                            "scores": {k: round(v, 6) for k, v in c.scores.items()}}
                           for c in self.candidates],
            "excluded": dict(self.excluded),
            "weights": dict(self.weights),
            "cache_hit": self.cache_hit,
        }


@attrs.define
class _Entry:
    version: int
    passing: tuple[ModelCard, ...]
    excluded: dict[str, str]
    static_scores: list[dict[str, float]]
    static_sums: list[float]


def _static_exclusion(card: ModelCard, req: ModelRequirements) -> str | None:
    missing = req.min_capabilities - card.capabilities
    if missing:
        return f"lacks capability {', '.join(sorted(missing))}"
    missing = req.required_features - card.features
    if missing:
        return f"lacks feature {', '.join(sorted(missing))}"
    if req.models is not None and card.id not in req.models:
        return "not in the requested models"
    if req.providers is not None and card.provider not in req.providers:
        return f"provider {card.provider} not allowed"
    if card.provider in req.exclude_providers:
        return f"provider {card.provider} excluded"
    missing = req.tags - card.tags
    if missing:
        return f"lacks tag {', '.join(sorted(missing))}"
    if req.min_context_window is not None and card.context_window < req.min_context_window:
        return f"context window {card.context_window} < {req.min_context_window}"
    if req.max_cost_per_1k_tokens is not None:
        if card.price is None:
            return "price unknown, cannot meet max_cost_per_1k_tokens"
        if card.price.per_1k_max > req.max_cost_per_1k_tokens:
            return (f"costs ${card.price.per_1k_max:f}/1k tokens > "
                    f"${req.max_cost_per_1k_tokens:f}")
    return None


def _clamp(x: float) -> float:
    return 0.0 if x != x or x < 0.0 else (1.0 if x > 1.0 else x)  # NaN -> 0


@attrs.define
class ModelSelector:
    """Ranks registered models for requirements. Thread-safe for reads; mutate from one task.

    ``rules`` maps rule name to (rule, weight); rules with weight 0 are skipped.
    ``live`` returns a provider's live load figures for a card; ``breaker_open`` tells whether
    a model's circuit breaker is open.
    """

    rules: Mapping[str, tuple[ScoringRule, float]]
    stats: StatsRegistry = attrs.field(factory=StatsRegistry)
    live: Callable[[ModelCard], Mapping[str, float]] | None = None
    breaker_open: Callable[[str], bool] | None = None
    on_rank: Callable[[float, bool], None] | None = None
    _cards: dict[str, ModelCard] = attrs.field(factory=dict)
    _version: int = 0
    _cache: OrderedDict[ModelRequirements, _Entry] = attrs.field(factory=OrderedDict)
    cache_hits: int = 0
    cache_misses: int = 0
    _known_caps: frozenset[str] = STANDARD_CAPABILITIES
    _known_features: frozenset[str] = STANDARD_FEATURES
    _static: list[tuple[str, ScoringRule, float]] = attrs.field(init=False, factory=list)
    _dynamic: list[tuple[str, ScoringRule, float]] = attrs.field(init=False, factory=list)
    _wsum: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        active = {n: (r, w) for n, (r, w) in self.rules.items() if w > 0}
        if not active:
            raise InvalidRequest("at least one scoring rule needs a weight > 0", field="weights")
        self.rules = active
        self._static = [(n, r, w) for n, (r, w) in active.items() if not r.uses]
        self._dynamic = [(n, r, w) for n, (r, w) in active.items() if r.uses]
        self._wsum = sum(w for _, w in active.values())

    # --- the model set -------------------------------------------------------------------

    def set_models(self, cards: Iterable[ModelCard]) -> None:
        self._cards = {c.id: c for c in sorted(cards, key=lambda c: c.id)}
        self._changed()

    def add(self, card: ModelCard) -> None:
        self._cards[card.id] = card
        self._cards = dict(sorted(self._cards.items()))
        self._changed()

    def remove(self, model_id: str) -> ModelCard | None:
        card = self._cards.pop(model_id, None)
        if card is not None:
            self._changed()
        return card

    def _changed(self) -> None:
        self._version += 1
        self._cache.clear()
        caps: set[str] = set(STANDARD_CAPABILITIES)
        feats: set[str] = set(STANDARD_FEATURES)
        for c in self._cards.values():
            caps |= c.capabilities
            feats |= c.features
        self._known_caps, self._known_features = frozenset(caps), frozenset(feats)

    @property
    def models(self) -> Mapping[str, ModelCard]:
        return self._cards

    # --- ranking -------------------------------------------------------------------------

    def validate(self, req: ModelRequirements) -> None:
        """Reject names no model and no standard vocabulary knows (likely typos)."""
        unknown = req.min_capabilities - self._known_caps
        if unknown:
            raise InvalidRequest(f"unknown capability {', '.join(sorted(unknown))}; known: "
                                 f"{', '.join(sorted(self._known_caps))}",
                                 field="min_capabilities")
        unknown = req.required_features - self._known_features
        if unknown:
            raise InvalidRequest(f"unknown feature {', '.join(sorted(unknown))}; known: "
                                 f"{', '.join(sorted(self._known_features))}",
                                 field="required_features")

    def _entry(self, req: ModelRequirements) -> tuple[_Entry, bool]:
        entry = self._cache.get(req)
        if entry is not None and entry.version == self._version:
            self.cache_hits += 1
            self._cache.move_to_end(req)
            return entry, True
        self.cache_misses += 1
        self.validate(req)
        passing: list[ModelCard] = []
        excluded: dict[str, str] = {}
        scores: list[dict[str, float]] = []
        sums: list[float] = []
        empty_shape = RequestShape()
        for card in self._cards.values():
            why = _static_exclusion(card, req)
            if why is not None:
                excluded[card.id] = why
                continue
            passing.append(card)
            s = {n: _clamp(r.fn(card, req, EMPTY, empty_shape)) for n, r, _ in self._static}
            scores.append(s)
            sums.append(sum(w * s[n] for n, _, w in self._static))
        entry = _Entry(self._version, tuple(passing), excluded, scores, sums)
        self._cache[req] = entry
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry, False

    def _stats(self, card: ModelCard) -> ModelStats:
        extra = self.live(card) if self.live is not None else None
        is_open = self.breaker_open(card.id) if self.breaker_open is not None else False
        return self.stats.snapshot(card.id, extra=extra, breaker_open=is_open)

    def rank(self, requirements: ModelRequirements | None = None,
             shape: RequestShape | None = None) -> Decision:
        """Every model that meets ``requirements``, best first, with the exclusions."""
        t0 = time.perf_counter()
        req = requirements or ModelRequirements()
        shape = shape or RequestShape()
        entry, hit = self._entry(req)
        excluded = dict(entry.excluded)
        ranked: list[Candidate] = []
        dynamic, wsum = self._dynamic, self._wsum
        for card, static, ssum in zip(entry.passing, entry.static_scores, entry.static_sums,
                                      strict=True):
            needed = shape.needed(card)
            if needed > card.context_window:
                needed = shape.needed_exact(card)
                if needed > card.context_window:
                    excluded[card.id] = (f"needs {needed} tokens, context window is "
                                         f"{card.context_window}")
                    continue
            stats = self._stats(card)
            if req.max_latency_ms is not None:
                lat = stats.latency_ms if stats.latency_ms is not None else card.latency_ms
                if lat is not None and lat > req.max_latency_ms:
                    excluded[card.id] = f"latency {lat:.0f} ms > {req.max_latency_ms:g} ms"
                    continue
            scores = dict(static)
            total = ssum
            for name, rule, w in dynamic:
                s = _clamp(rule.fn(card, req, stats, shape))
                scores[name] = s
                total += w * s
            ranked.append(Candidate(card, total / wsum, scores))
        ranked.sort(key=lambda c: (-c.score, c.card.id))
        duration = time.perf_counter() - t0
        if self.on_rank is not None:
            self.on_rank(duration, hit)
        weights = {n: w for n, (_, w) in self.rules.items()}
        return Decision(tuple(ranked), excluded, weights, req, hit, duration)

    def select(self, requirements: ModelRequirements | None = None,
               shape: RequestShape | None = None) -> ModelCard:
        """The best model for ``requirements``, or :class:`CapabilityNotSupported`."""
        decision = self.rank(requirements, shape)
        if decision.chosen is None:
            raise CapabilityNotSupported(
                f"no model meets the requirements ({len(self._cards)} registered)",
                excluded=dict(decision.excluded))
        return decision.chosen.card


def rules_from(available: Sequence[ScoringRule], weights: Mapping[str, float]
               ) -> dict[str, tuple[ScoringRule, float]]:
    """Pair each available rule with its configured weight (default: the rule's own)."""
    return {r.name: (r, float(weights.get(r.name, r.default_weight))) for r in available}
