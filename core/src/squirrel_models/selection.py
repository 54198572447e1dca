"""Model selection: a hard filter, then weighted scoring rules, then a deterministic ranking.

``rank`` returns a :class:`Decision`: every candidate with its total and per-rule scores, and
every excluded model with the reason. The static part of the filter and of the scores (what
depends only on cards and requirements) is cached per requirements; the cache is dropped
whenever a model is registered or removed. Ties are broken by model id, so the same inputs
always give the same ranking.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from itertools import filterfalse, repeat
from operator import add, truediv
from types import MappingProxyType

import attrs

from .decision import Candidate, Decision, _Col, _KeyedCol, _Lazy, new_decision
from .errors import CapabilityNotSupported, InvalidRequest
from .scoring import RequestShape, ScoringRule, checked
from .stats import EMPTY, ModelStats, StatsRegistry, from_figures
from .types import AIRequest, ModelCard, ModelRequirements

__all__ = ["Candidate", "Decision", "ModelSelector", "STANDARD_CAPABILITIES", "STANDARD_FEATURES",
           "with_needs"]

STANDARD_CAPABILITIES = frozenset({"chat", "completion", "vision", "embedding", "audio"})
STANDARD_FEATURES = frozenset(
    {"tools", "json_mode", "json_schema", "streaming", "system_prompt", "logprobs", "reasoning",
     "stop"}
)
CACHE_SIZE = 256


@attrs.define
class _Entry:
    """What is cached per requirements: the hard filter's result, the static scores, and
    everything else that holds while a model's statistics are empty (most models, most of the
    time): the scores of rules that read only the statistics, and latency exclusions."""

    version: int
    passing: tuple[ModelCard, ...]
    excluded: dict[str, str]
    static_scores: list[dict[str, float]]
    static_sums: list[float]
    index: dict[str, int] = attrs.field(factory=dict)
    #: static sums plus the dynamic rules before the first one that reads the request,
    #: with empty statistics (the same additions in the same order as the full sum)
    base: list[float] = attrs.field(factory=list)
    #: per dynamic rule: the column of scores with empty statistics, or None (per request)
    empty_cols: list[list[float] | None] = attrs.field(factory=list)
    #: per dynamic rule: the card keys of a ``card_key`` rule, with one card per key
    keys: list[tuple[list[object], dict[object, ModelCard]] | None] = attrs.field(factory=list)
    folded: int = 0  # how many leading dynamic rules ``base`` includes
    consts: list[float | None] = attrs.field(factory=list)  # a column's value if all equal
    quiet_excluded: dict[int, str] = attrs.field(factory=dict)  # latency, empty statistics
    min_window: int = 0
    live_idx: list[int] | None = None  # cards whose provider reports live statistics
    proxy: Mapping[str, str] = attrs.field(factory=dict)
    #: the rate-limit fit's plans, per caller key (see ``ModelSelector.unfit``)
    fit: dict[object, object] = attrs.field(factory=dict)


#: Why an unpriced model is left out when the configuration does not allow unpriced models.
UNPRICED = ("price unknown: set its price in [[providers.models]], or [budget] allow_unpriced = "
            "true to use models whose spend cannot be bounded")


#: Why a model switched off with ``enabled = false`` in its ``[[providers.models]]`` entry is
#: left out of every ranking.
DISABLED = "disabled in configuration"


def _static_exclusion(card: ModelCard, req: ModelRequirements,
                      exclude_unpriced: bool = False,
                      disabled: Collection[str] = ()) -> str | None:
    if card.id in disabled:
        return DISABLED
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
    if exclude_unpriced and card.price is None:
        return UNPRICED
    return None


def with_needs(req: ModelRequirements, request: AIRequest | None) -> ModelRequirements:
    """``req`` plus what ``request`` itself needs of a model (``AIRequest.needs``: ``vision``
    for images, ``json_mode``/``json_schema`` for a response format), so the hard filter
    leaves out, with the reason, every model that could not honour it."""
    if request is None:
        return req
    caps, feats = request.needs
    if not caps and not feats:
        return req
    if caps <= req.min_capabilities and feats <= req.required_features:
        return req
    return attrs.evolve(req, min_capabilities=req.min_capabilities | caps,
                        required_features=req.required_features | feats)


def _clamp(x: float) -> float:
    return 0.0 if x != x or x < 0.0 else (1.0 if x > 1.0 else x)  # NaN -> 0


_NO_SHAPE = RequestShape()


def _excluded(entry: _Entry, dyn_excluded: dict[int, str]) -> Mapping[str, str]:
    """The cached exclusions of ``entry`` plus this ranking's (``dyn_excluded``, by index)."""
    cards = entry.passing
    return {**entry.excluded, **{cards[i].id: dyn_excluded[i] for i in sorted(dyn_excluded)}}


class _ScoreOne:
    """The scores of a ranking of one model, computed when first read (see
    ``ModelSelector._one``) from the statistics of the ranking's moment: one object, where a
    closure made a function and six cells per request for the garbage collector to track."""

    __slots__ = ("entry", "figures", "req", "selector", "shape", "snap")

    def __init__(self, selector: ModelSelector, entry: _Entry, req: ModelRequirements,
                 shape: RequestShape, snap: ModelStats | None,
                 figures: tuple[float | None, float, int, int] | None) -> None:
        self.selector, self.entry, self.req, self.shape = selector, entry, req, shape
        self.snap, self.figures = snap, figures

    def __call__(self) -> tuple[list[float], list[tuple[str, _Col]], dict[int, dict[str, float]]]:
        snap, figures = self.snap, self.figures
        stats = snap if snap is not None else (None if figures is None else from_figures(figures))
        selector, entry, req, shape = self.selector, self.entry, self.req, self.shape
        if stats is None or stats is EMPTY or req.max_latency_ms is not None:
            return selector._score(entry, {} if stats is None else {0: stats}, req, shape, {})
        # The usual case (a model with statistics, no latency ceiling), computed directly:
        # what ``_score`` gives for one model (the gateway reads these scores for every
        # answer's reason header), without its column totals, which ``_rank_loud`` replaces.
        # The same additions in the same order: the same floats.
        card = entry.passing[0]
        scores = dict(entry.static_scores[0])
        total = entry.static_sums[0]
        cols: list[tuple[str, _Col]] = []
        for j, (name, rule, w) in enumerate(selector._dynamic):
            col = entry.empty_cols[j]
            if col is None:  # a rule that reads the request: its column of empty statistics
                col = [_clamp(rule.fn(card, req, EMPTY, shape))]
            s = _clamp(rule.fn(card, req, stats, shape)) if "stats" in rule.uses else col[0]
            cols.append((name, col))
            scores[name] = s
            total += w * s
        return [total / selector._wsum], cols, {0: scores}


@attrs.define
class ModelSelector:
    """Ranks registered models for requirements. Thread-safe for reads; mutate from one task.

    ``rules`` maps rule name to (rule, weight); rules with weight 0 are skipped.
    ``live`` returns a provider's live load figures for a card; ``live_provider`` (optional)
    tells whether a provider reports any, so ``live`` is called only for those providers'
    cards. ``breaker_open`` tells whether a model's circuit breaker is open;
    ``breaker_ids`` (optional) lists the models that have breaker state, so the others are
    not asked.
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
    live_provider: Callable[[str], bool] | None = None
    breaker_ids: Callable[[], Collection[str]] | None = None
    #: Leave unpriced models out of every ranking (reason :data:`UNPRICED`); the manager sets
    #: it unless ``[budget] allow_unpriced = true``.
    exclude_unpriced: bool = False
    #: Model ids switched off in configuration (reason :data:`DISABLED`); change it with
    #: :meth:`set_disabled`, which drops the cached rankings.
    disabled: frozenset[str] = frozenset()
    #: Scopes (``model:<id>``, ``provider:<name>``) at a rate limit right now, with the
    #: reason: their models are left out of the ranking (the manager's rate limiter).
    limited: Callable[[], Mapping[str, str]] | None = None
    #: Leaves out the models a configured rate limit can never admit for the request ranked
    #: (a :class:`~squirrel_models.ratefit.RateFit`; None: no configured limit can), adding
    #: them with the reason to the exclusions by index; given the entry's plans to cache in.
    unfit: Callable[[Sequence[ModelCard], RequestShape, dict[object, object], dict[int, str]],
                    None] | None = None
    _static: list[tuple[str, ScoringRule, float]] = attrs.field(init=False, factory=list)
    _dynamic: list[tuple[str, ScoringRule, float]] = attrs.field(init=False, factory=list)
    _wsum: float = attrs.field(init=False, default=0.0)
    _weights: Mapping[str, float] = attrs.field(init=False, factory=dict)
    _unsorted: bool = attrs.field(init=False, default=False)
    #: The requirements object of the last ranking and its entry (see ``_entry``).
    _last: tuple[ModelRequirements, _Entry] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        for n, (_, w) in self.rules.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise InvalidRequest(f"must be a finite number >= 0, got {w!r}", field=f"weights.{n}")
        active = {n: (checked(r), w) for n, (r, w) in self.rules.items() if w > 0}
        if not active:
            raise InvalidRequest("at least one scoring rule needs a weight > 0", field="weights")
        self.rules = active
        # Only the ratios of the weights matter: scaled so the largest is 1, sums of weighted
        # scores in [0, 1] cannot overflow to inf (and the total to NaN), whatever the weights.
        top = max(w for _, w in active.values())
        scaled = {n: (r, w / top) for n, (r, w) in active.items()}
        self._static = [(n, r, w) for n, (r, w) in scaled.items() if not r.uses]
        self._dynamic = [(n, r, w) for n, (r, w) in scaled.items() if r.uses]
        self._wsum = sum(w for _, w in scaled.values())
        self._weights = MappingProxyType({n: w for n, (_, w) in active.items()})

    # --- the model set -------------------------------------------------------------------

    def set_models(self, cards: Iterable[ModelCard]) -> None:
        self._cards = {c.id: c for c in sorted(cards, key=lambda c: c.id)}
        self._unsorted = False
        self._changed()

    def set_disabled(self, model_ids: Iterable[str]) -> None:
        self.disabled = frozenset(model_ids)
        self._changed()

    def add(self, card: ModelCard) -> None:
        # Sorting is deferred to the next read, so registering n models one by one is O(n).
        if self._cards and not self._unsorted and card.id not in self._cards:
            self._unsorted = card.id < next(reversed(self._cards))
        self._cards[card.id] = card
        self._version += 1
        self._cache.clear()
        self._known_caps = self._known_caps | card.capabilities
        self._known_features = self._known_features | card.features

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

    def _sorted(self) -> dict[str, ModelCard]:
        if self._unsorted:
            self._cards = dict(sorted(self._cards.items()))
            self._unsorted = False
        return self._cards

    @property
    def models(self) -> Mapping[str, ModelCard]:
        return self._sorted()

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
        last = self._last
        if last is not None and last[0] is req and last[1].version == self._version:
            # The same requirements object as the last call (the configuration's, for most
            # requests): no hashing, and it is the most recent entry already.
            self.cache_hits += 1
            return last[1], True
        entry = self._cache.get(req)
        if entry is not None and entry.version == self._version:
            self.cache_hits += 1
            self._cache.move_to_end(req)
            self._last = (req, entry)
            return entry, True
        return self._new_entry(req), False

    def _new_entry(self, req: ModelRequirements) -> _Entry:
        """A cache miss of :meth:`_entry` (apart, so the hits build no closure cells)."""
        self.cache_misses += 1
        self.validate(req)
        passing: list[ModelCard] = []
        excluded: dict[str, str] = {}
        scores: list[dict[str, float]] = []
        sums: list[float] = []
        empty_shape = RequestShape()
        for card in self._sorted().values():
            why = _static_exclusion(card, req, self.exclude_unpriced, self.disabled)
            if why is not None:
                excluded[card.id] = why
                continue
            passing.append(card)
            s = {n: _clamp(r.fn(card, req, EMPTY, empty_shape)) for n, r, _ in self._static}
            scores.append(s)
            sums.append(sum(w * s[n] for n, _, w in self._static))
        entry = _Entry(self._version, tuple(passing), excluded, scores, sums)
        self._prepare(entry, req)
        self._cache[req] = entry
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        self._last = (req, entry)
        return entry

    def _prepare(self, entry: _Entry, req: ModelRequirements) -> None:
        """Fill the parts of ``entry`` that hold for models with empty statistics."""
        cards = entry.passing
        entry.index = {c.id: i for i, c in enumerate(cards)}
        entry.proxy = MappingProxyType(entry.excluded)
        entry.min_window = min((c.context_window for c in cards), default=0)
        base = list(entry.static_sums)
        folding = True
        for _name, rule, w in self._dynamic:
            col: list[float] | None = None
            keys: tuple[list[object], dict[object, ModelCard]] | None = None
            if "request" not in rule.uses:
                col = [_clamp(rule.fn(c, req, EMPTY, _NO_SHAPE)) for c in cards]
            else:
                folding = False
                if rule.card_key is not None and "stats" not in rule.uses:
                    key = rule.card_key
                    ks = [key(c) for c in cards]
                    keys = (ks, dict(zip(ks, cards, strict=True)))
            if folding and col is not None:
                base = [t + w * s for t, s in zip(base, col, strict=True)]
                entry.folded += 1
            entry.empty_cols.append(col)
            entry.keys.append(keys)
            entry.consts.append(col[0] if col and col.count(col[0]) == len(col) else None)
        entry.base = base
        if req.max_latency_ms is not None:
            for i, c in enumerate(cards):
                if c.latency_ms is not None and c.latency_ms > req.max_latency_ms:
                    entry.quiet_excluded[i] = (f"latency {c.latency_ms:.0f} ms > "
                                               f"{req.max_latency_ms:g} ms")
        if self.live is not None:
            if self.live_provider is None:
                entry.live_idx = list(range(len(cards)))
            else:
                has = {p: self.live_provider(p) for p in {c.provider for c in cards}}
                entry.live_idx = [i for i, c in enumerate(cards) if has[c.provider]]

    def _stats(self, card: ModelCard) -> ModelStats:
        extra = self.live(card) if self.live is not None else None
        is_open = self.breaker_open(card.id) if self.breaker_open is not None else False
        return self.stats.snapshot(card.id, extra=extra, breaker_open=is_open)

    def _loud(self, entry: _Entry) -> dict[int, ModelStats]:
        """The models whose statistics are not empty right now, with their statistics."""
        index, cards = entry.index, entry.passing
        ids: set[int] = set()
        registry_ids = self.stats.ids()
        if len(registry_ids) < len(index):
            ids.update(i for i in map(index.get, list(registry_ids)) if i is not None)
        else:
            ids.update(i for mid, i in index.items() if mid in registry_ids)
        extras: dict[int, Mapping[str, float]] = {}
        if entry.live_idx is not None and self.live is not None:
            live = self.live
            for i in entry.live_idx:
                extra = live(cards[i])
                if extra:
                    extras[i] = extra
                    ids.add(i)
        is_open = self.breaker_open
        opened: set[int] = set()
        candidates: Iterable[int]
        if is_open is not None:
            if self.breaker_ids is not None:
                candidates = [i for i in map(index.get, list(self.breaker_ids())) if i is not None]
            else:
                candidates = range(len(cards))
            opened = {i for i in candidates if is_open(cards[i].id)}
            ids |= opened
        snapshot = self.stats.snapshot
        return {i: snapshot(cards[i].id, extra=extras.get(i), breaker_open=i in opened)
                for i in sorted(ids)}

    def recounts(self, requirements: ModelRequirements, shape: RequestShape) -> list[ModelCard]:
        """The models :meth:`rank` will ask ``shape.recount`` about: those meeting
        ``requirements`` whose window the prompt's upper bound does not fit (the manager
        counts a large prompt for them in a worker thread first), less those even its lower
        bound does not fit (no count could make room)."""
        entry, _hit = self._entry(requirements)
        return [card for card in entry.passing
                if shape.needed(card) > card.context_window and not shape.surely_exceeds(card)]

    def rank(self, requirements: ModelRequirements | None = None,
             shape: RequestShape | None = None) -> Decision:
        """Every model that meets ``requirements``, best first, with the exclusions."""
        t0 = time.perf_counter()
        req = requirements or ModelRequirements()
        shape = shape or _NO_SHAPE
        entry, hit = self._entry(req)
        cards = entry.passing
        n = len(cards)
        dyn_excluded: dict[int, str] = {}
        # The context window: ``needed`` is the same for every card (see RequestShape).
        if n and shape.needed(cards[0]) > entry.min_window:
            for i, card in enumerate(cards):
                needed = shape.needed(card)
                if needed > card.context_window:
                    # Excluded only when it surely does not fit (see RequestShape).
                    needed, exact = shape.needed_at_least(card)
                    if needed > card.context_window:
                        at_least = "" if exact else "at least "
                        dyn_excluded[i] = (f"needs {at_least}{needed} tokens, context window "
                                           f"is {card.context_window}")
        if self.limited is not None and n:
            limited = self.limited()
            if limited:
                _exclude_limited(limited, entry, dyn_excluded)
        if self.unfit is not None and n and shape.request is not None:
            self.unfit(cards, shape, entry.fit, dyn_excluded)
        if n == 1:
            lazy = self._one(entry, req, shape, dyn_excluded)
        else:
            loud = self._loud(entry) if n else {}
            for i, why in entry.quiet_excluded.items():
                if i not in loud and i not in dyn_excluded:
                    dyn_excluded[i] = why
            scores, cols, loud_scores = self._score(entry, loud, req, shape, dyn_excluded)
            keep = range(n) if not dyn_excluded else list(filterfalse(dyn_excluded.__contains__,
                                                                       range(n)))
            lazy = _Lazy(cards, keep, scores, entry.static_scores, cols, loud_scores)
        excluded = _excluded(entry, dyn_excluded) if dyn_excluded else entry.proxy
        duration = time.perf_counter() - t0
        if self.on_rank is not None:
            self.on_rank(duration, hit)
        return new_decision(None, excluded, self._weights, req, hit, duration, lazy)

    def _one(self, entry: _Entry, req: ModelRequirements, shape: RequestShape,
             dyn_excluded: dict[int, str]) -> _Lazy:
        """The ranking of a single model that passed the filter: its place needs no score,
        so its scores are computed when first read, from the statistics snapshot taken now
        (immutable: the same numbers as computing them now). Exclusions are decided now."""
        card = entry.passing[0]
        extra = None
        if entry.live_idx and self.live is not None:
            extra = self.live(card) or None
        is_open = False
        if self.breaker_open is not None and (self.breaker_ids is None
                                              or card.id in self.breaker_ids()):
            is_open = self.breaker_open(card.id)
        # The statistics of now: a snapshot with live figures or an open breaker, else the
        # plain figures (a tuple), made into the same snapshot only if the scores are read.
        snap: ModelStats | None = None
        figures = None
        if extra or is_open:
            snap = self.stats.snapshot(card.id, extra=extra, breaker_open=is_open)
            latency = snap.latency_ms
        else:
            figures = self.stats.figures(card.id)
            latency = None if figures is None else figures[0]
        loud = snap is not None or figures is not None
        if 0 not in dyn_excluded:
            max_latency = req.max_latency_ms
            if loud and max_latency is not None:
                lat = latency if latency is not None else card.latency_ms
                if lat is not None and lat > max_latency:
                    dyn_excluded[0] = f"latency {lat:.0f} ms > {max_latency:g} ms"
            elif not loud and 0 in entry.quiet_excluded:
                dyn_excluded[0] = entry.quiet_excluded[0]
        keep = () if dyn_excluded else (0,)
        return _Lazy(entry.passing, keep, None, entry.static_scores, None, None,
                     fill=_ScoreOne(self, entry, req, shape, snap, figures))

    def _score(self, entry: _Entry, loud: dict[int, ModelStats], req: ModelRequirements,
               shape: RequestShape, dyn_excluded: dict[int, str]
               ) -> tuple[list[float], list[tuple[str, _Col]], dict[int, dict[str, float]]]:
        """Every model's total, the dynamic rules' columns and the full scores of the models
        with statistics (``loud``; one whose latency is over the limit joins
        ``dyn_excluded``)."""
        cards = entry.passing
        # Every model as if its statistics were empty, rule by rule in the same order as the
        # full sum (so totals are bit-identical); then the models with statistics, one by one.
        totals = entry.base
        cols: list[tuple[str, _Col]] = []
        for j, (name, rule, w) in enumerate(self._dynamic):
            col: _Col | None = entry.empty_cols[j]
            if col is None:
                col = self._request_col(rule, entry.keys[j], cards, req, shape)
            cols.append((name, col))
            if j < entry.folded:
                continue
            # w * s is computed as in the plain sum, once per distinct value where possible.
            const = entry.consts[j]
            if const is not None:
                # map() with operator functions: the same float operations as the plain
                # comprehension (bit-identical totals), at C speed over 1,000 models.
                totals = list(map(add, totals, repeat(w * const)))
            elif isinstance(col, _KeyedCol):
                wby = {k: w * v for k, v in col.by_key.items()}
                totals = list(map(add, totals, map(wby.__getitem__, col.keys)))
            else:
                totals = [t + w * s for t, s in zip(totals, col, strict=True)]
        if loud:
            totals = list(totals)
            loud_scores = self._rank_loud(entry, loud, cols, req, shape, totals, dyn_excluded)
        else:
            loud_scores = {}
        wsum = self._wsum
        return list(map(truediv, totals, repeat(wsum))), cols, loud_scores

    def _request_col(self, rule: ScoringRule,
                     keys: tuple[list[object], dict[object, ModelCard]] | None,
                     cards: Sequence[ModelCard], req: ModelRequirements, shape: RequestShape
                     ) -> _Col:
        fn = rule.fn
        if keys is None:
            return [_clamp(fn(c, req, EMPTY, shape)) for c in cards]
        ks, one = keys
        return _KeyedCol(ks, {k: _clamp(fn(c, req, EMPTY, shape)) for k, c in one.items()})

    def _rank_loud(self, entry: _Entry, loud: dict[int, ModelStats],
                   cols: list[tuple[str, _Col]], req: ModelRequirements,
                   shape: RequestShape, totals: list[float], dyn_excluded: dict[int, str]
                   ) -> dict[int, dict[str, float]]:
        """Score the models with statistics in full, as the plain per-model loop would."""
        out: dict[int, dict[str, float]] = {}
        cards, max_latency = entry.passing, req.max_latency_ms
        for i, stats in loud.items():
            if i in dyn_excluded:
                continue
            card = cards[i]
            if max_latency is not None:
                lat = stats.latency_ms if stats.latency_ms is not None else card.latency_ms
                if lat is not None and lat > max_latency:
                    dyn_excluded[i] = f"latency {lat:.0f} ms > {max_latency:g} ms"
                    continue
            if stats is EMPTY:
                continue  # the column values already hold
            scores = dict(entry.static_scores[i])
            total = entry.static_sums[i]
            for (name, rule, w), (_, col) in zip(self._dynamic, cols, strict=True):
                s = _clamp(rule.fn(card, req, stats, shape)) if "stats" in rule.uses else col[i]
                scores[name] = s
                total += w * s
            totals[i] = total
            out[i] = scores
        return out

    def select(self, requirements: ModelRequirements | None = None,
               shape: RequestShape | None = None) -> ModelCard:
        """The best model for ``requirements``, or :class:`CapabilityNotSupported`."""
        decision = self.rank(requirements, shape)
        chosen = decision.chosen
        if chosen is None:
            raise CapabilityNotSupported(
                f"no model meets the requirements ({len(self._cards)} registered)",
                excluded=dict(decision.excluded))
        return chosen.card


def _exclude_limited(limited: Mapping[str, str], entry: _Entry,
                     dyn_excluded: dict[int, str]) -> None:
    """Leave out the models whose own scope or provider is at a rate limit."""
    index = entry.index
    providers: dict[str, str] = {}
    for scope, why in limited.items():
        kind, _, name = scope.partition(":")
        if kind == "model":
            i = index.get(name)
            if i is not None and i not in dyn_excluded:
                dyn_excluded[i] = why
        elif kind == "provider":
            providers[name] = why
    if providers:
        for i, card in enumerate(entry.passing):
            reason = providers.get(card.provider)
            if reason is not None and i not in dyn_excluded:
                dyn_excluded[i] = reason


def rules_from(available: Sequence[ScoringRule], weights: Mapping[str, float]
               ) -> dict[str, tuple[ScoringRule, float]]:
    """Pair each available rule with its configured weight (default: the rule's own)."""
    return {r.name: (r, float(weights.get(r.name, r.default_weight))) for r in available}
