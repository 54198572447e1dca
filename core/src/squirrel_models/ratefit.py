"""Which models a configured rate limit can never admit for a request (internal).

A ``tpm`` limit below an attempt's worst case (its prompt plus the output cap sent upstream),
or a limit of 0 on the caller's key, refuses the attempt whatever the wait
(:class:`~squirrel_models.errors.RateLimitTooSmall`). Selection leaves such a model out of
the ranking with that reason, so ``Decision.explain()`` and ``squirrel select --explain``
show it and the fallback chain goes to a model that can take the request. Excluded, not
ranked last: no wait and no retry can change the verdict, and every kind of limit that can
give it (a ``tpm`` below the worst case, a 0) is as final as a missing capability.

Only the configured limits are read: never a window's usage nor what an upstream announced
(both change from one moment to the next), so the same configuration and request always give
the same ranking (invariant 4).

Cost: none when no limit could refuse this way (no ``tpm``, no 0: the selector is given no
:class:`RateFit`). Else the charges of each ranked model for the caller's key are worked out
once per ranking cache entry and caller key a limit names (every key, with a ``key:*`` limit;
one plan for all the others) (a :class:`_Plan`), and a request whose prompt bound plus
output cap fits the smallest ``tpm`` of them costs one comparison; only a request near a
limit has the prompt counted, and only on the models whose cheap bound passes their limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence

import attrs

from .errors import RateLimitTooSmall
from .ratelimit import RateCharge, RateLimit, never_fits, rate_charges_for
from .scoring import RequestShape
from .tokens import TokenManager, ceiling
from .types import AIRequest, ModelCard

__all__ = ["RateFit"]

#: Caller keys whose plans one ranking cache entry keeps (more: the plans start again).
MAX_KEYS = 1024


@attrs.frozen
class _Plan:
    """The limits that could refuse a request on the models of one ranking cache entry,
    for one caller key: ``zero``: the models under a limit of 0 (by index); ``tpm``: the
    others' tightest ``tpm`` charge; ``least``: the smallest of those limits; ``widest``:
    the largest output cap among those models for a request without ``max_tokens``."""

    zero: dict[int, RateCharge]
    tpm: list[tuple[int, RateCharge]]
    least: int
    widest: int


@attrs.define
class RateFit:
    """Leaves out of a ranking the models a configured limit can never admit (see the module
    docstring). Built by :meth:`for_limits` for a configuration; called by the selector."""

    limits: tuple[RateLimit, ...]
    tokens: TokenManager
    #: The caller keys a limit names (``key:<key>``; ``*`` for ``key:*``): any other key's
    #: charges are those of no key, and share its plan.
    _keys: frozenset[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._keys = frozenset(lim.scope[4:] for lim in self.limits
                               if lim.scope.startswith("key:"))

    @classmethod
    def for_limits(cls, limits: Iterable[RateLimit], tokens: TokenManager) -> RateFit | None:
        """A :class:`RateFit` for ``limits``, or None when none of them can refuse a request
        for good (no ``tpm`` and no limit of 0)."""
        limits = tuple(limits)
        if not any(lim.tpm is not None or 0 in (lim.rpm, lim.max_concurrent)
                   for lim in limits):
            return None
        return cls(limits, tokens)

    def __call__(self, cards: Sequence[ModelCard], shape: RequestShape,
                 plans: MutableMapping[object, object], excluded: dict[int, str]) -> None:
        """Add to ``excluded`` (by index in ``cards``) each model no limit admits the request
        of ``shape`` on, with the reason. ``plans``: the ranking cache entry's store."""
        request = shape.request
        if request is None:
            return
        key = request.budget_key
        if key is not None and "*" not in self._keys and key not in self._keys:
            key = None  # no limit names it: one plan for every such key
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= MAX_KEYS:
                plans.clear()
            plan = plans[key] = self._plan(cards, key)
        assert isinstance(plan, _Plan)
        for i, charge in plan.zero.items():
            if i not in excluded:
                excluded[i] = self._refusal(charge, 1, cards[i]).reason()
        if not plan.tpm:
            return
        top = ceiling(shape.prompt_tokens, request)  # what the prompt counts at most
        cap = request.max_tokens
        if top + (cap if cap is not None else plan.widest) <= plan.least:
            return  # the common case: the request fits every tpm limit, whatever the count
        for i, charge in plan.tpm:
            if i in excluded:
                continue
            card = cards[i]
            if top + self.tokens.output_cap(request, card) <= charge.limit:
                continue
            need = self.worst(request, card)
            if need > charge.limit:
                excluded[i] = self._refusal(charge, need, card).reason()

    def _plan(self, cards: Sequence[ModelCard], key: str | None) -> _Plan:
        zero: dict[int, RateCharge] = {}
        tpm: list[tuple[int, RateCharge]] = []
        for i, card in enumerate(cards):
            charges = rate_charges_for(self.limits, provider=card.provider, model_id=card.id,
                                       key=key)
            nothing = next((c for c in charges if never_fits(c, 0)), None)
            if nothing is not None:
                zero[i] = nothing
                continue
            tight = min((c for c in charges if c.kind == "tpm"), key=lambda c: c.limit,
                        default=None)
            if tight is not None:
                tpm.append((i, tight))
        return _Plan(zero, tpm, min((c.limit for _, c in tpm), default=0),
                     max((self.tokens.default_cap(cards[i]) for i, _ in tpm), default=0))

    def worst(self, request: AIRequest, card: ModelCard) -> int:
        """The tokens an attempt of ``request`` on ``card`` asks a ``tpm`` limit for: the
        same estimate the attempt makes (its prompt plus the output cap sent upstream)."""
        estimate = self.tokens.estimate(request, card)
        return estimate.prompt.tokens + estimate.max_output

    @staticmethod
    def _refusal(charge: RateCharge, need: int, card: ModelCard,
                 excluded: Mapping[str, str] | None = None) -> RateLimitTooSmall:
        return RateLimitTooSmall(scope=charge.scope, kind=charge.kind, limit=charge.limit,
                                 requested=charge.amount(need), model_id=card.id,
                                 excluded=excluded)

    def refusal(self, excluded: Mapping[str, str], models: Mapping[str, ModelCard],
                request: AIRequest) -> RateLimitTooSmall | None:
        """The refusal of the first of ``excluded`` (model id -> reason) that a limit can
        never admit ``request`` on, carrying every reason, or None: why a request no model can
        take ends (rarely called)."""
        key = request.budget_key
        for mid in excluded:
            card = models.get(mid)
            if card is None:
                continue
            charges = rate_charges_for(self.limits, provider=card.provider, model_id=card.id,
                                       key=key)
            need = 0
            for charge in sorted(charges, key=lambda c: c.kind == "tpm"):  # a 0 first
                if charge.kind == "tpm" and not need:
                    need = self.worst(request, card)
                if never_fits(charge, need):
                    return self._refusal(charge, need, card, excluded)
        return None
