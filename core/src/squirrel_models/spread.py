"""Load spread among equivalent candidates (used by the manager; see docs/rate-limits.md).

The ranking is deterministic: ten deployments of one model at one price (ten keys, regions or
servers) rank in id order, and the one that answered first then also has the best observed
latency, so every request would go to it. A :class:`Spreader` takes the candidates whose score
*on their cards* (price, quality, context, tags: the total before live statistics) is within
``margin`` of the best (with ``margin`` 0, only deployments of the same model: one model name
behind several providers) and draws which of them goes first, from a seeded generator (the
same seed and the same requests give the same draws):

- ``by = "in_flight"``: one of those with the fewest requests in flight, uniformly;
- ``by = "headroom"``: weighted by each one's rate-limit headroom (the share of its tightest
  limit still free, configured or announced upstream).

The others keep their rank order behind it (they are the fallbacks). Live health is not
ignored: a model whose circuit breaker is open is not a candidate at all, a slow one holds
more requests in flight and is drawn less, and one at a rate limit has no headroom. The draw
is recorded in the decision (:class:`SpreadDraw`, ``Decision.spread``) and shown by
``explain()``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from itertools import compress, repeat
from operator import le

import attrs

from .decision import Decision, _Lazy
from .types import ModelCard

__all__ = ["SpreadDraw", "Spreader"]

#: Scores are sums of floats: two equal models may differ in the last bits.
_EPSILON = 1e-9


@attrs.frozen
class SpreadDraw:
    """How equivalent candidates shared one request: ``group`` (model ids whose score on
    their cards is within ``margin`` of the best, in id order) and their ``weights``; ``chosen`` went first. ``draw``
    is the uniform number in [0, 1) taken from the generator seeded with ``seed``."""

    group: tuple[str, ...]
    weights: tuple[float, ...]
    chosen: str
    by: str
    margin: float
    draw: float
    seed: int

    def describe(self) -> str:
        return (f"{len(self.group)} candidates within {self.margin:g} of the best share the "
                f"load (by {self.by.replace('_', ' ')}): drew {self.chosen} "
                f"(seed {self.seed}, draw {self.draw:.4f})")

    def to_dict(self) -> dict[str, object]:
        return {"group": list(self.group), "weights": [round(w, 6) for w in self.weights],
                "chosen": self.chosen, "by": self.by, "margin": self.margin,
                "draw": round(self.draw, 6), "seed": self.seed}


@attrs.define
class Spreader:
    """Draws the first candidate among those within ``margin`` of the best (module docstring).

    ``in_flight(model_id)`` and ``headroom(card)`` are read for the candidates of a group
    only; ``seed`` None: a random seed (recorded in each draw, so a run can be replayed).
    """

    margin: float
    by: str
    in_flight: Callable[[str], int]
    headroom: Callable[[ModelCard], float]
    seed: int | None = None
    _rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.seed is None:
            self.seed = int.from_bytes(os.urandom(4), "big")
        self._rng = random.Random(self.seed)

    def apply(self, decision: Decision) -> Decision:
        """``decision`` with the drawn candidate first, and the draw recorded; unchanged when
        fewer than two candidates are within the margin."""
        lazy = decision._lazy
        if lazy is None or len(lazy.keep) < 2 or self.margin < 0:
            return decision
        # ``keep`` is the candidates in id order (the cards' order), which is the group's
        # order: not the ranking's, since live latency reorders the ranking from run to run
        # and the same draw must pick the same model. The ranking is sorted only when a
        # group is drawn: in the common case, one model stands out and nothing is sorted.
        keep, cards = lazy.keep, lazy.cards
        quiet = _card_scores(lazy, decision.weights)
        # C-speed passes (map, compress): 1,000 candidates are read in microseconds.
        if len(keep) == len(quiet):  # every card is a candidate
            floor = max(quiet) - self.margin - _EPSILON
            group = list(compress(range(len(quiet)), map(le, repeat(floor), quiet)))
        else:
            kept = list(map(quiet.__getitem__, keep))
            floor = max(kept) - self.margin - _EPSILON
            group = list(compress(keep, map(le, repeat(floor), kept)))
        if len(group) >= 2 and self.margin == 0:
            # No margin: only deployments of one model (one name behind several providers)
            # are equivalent; two different models that score alike keep their order. The
            # model is the ranking's first among the group (the first of its highest
            # scores in id order, as the ranking's stable sort puts it, unless reordered).
            if lazy._order is None:
                lead = max(group, key=lazy.scores.__getitem__)
            else:
                members = set(group)
                lead = next(i for i in lazy._order if i in members)
            name = cards[lead].model
            group = [i for i in group if cards[i].model == name]
        if len(group) < 2:
            return decision  # the common case: one model stands out
        order = lazy.order
        if self.by == "headroom":
            weights = [max(self.headroom(cards[i]), 0.0) for i in group]
            if not any(weights):
                weights = [1.0] * len(group)
        else:
            loads = [self.in_flight(cards[i].id) for i in group]
            least = min(loads)
            weights = [1.0 if n == least else 0.0 for n in loads]
        draw = self._rng.random()
        target, acc, pick = draw * sum(weights), 0.0, group[-1]
        for i, w in zip(group, weights, strict=True):
            acc += w
            if w > 0 and target < acc:
                pick = i
                break
        new_order = [pick, *(i for i in order if i != pick)]
        spread = SpreadDraw(tuple(cards[i].id for i in group), tuple(weights), cards[pick].id,
                            self.by, self.margin, draw, self.seed or 0)
        new_lazy = _Lazy(lazy.cards, new_order, lazy.scores, lazy.static, lazy.cols, lazy.loud,
                         order=new_order)
        return attrs.evolve(decision, candidates=None, _lazy=new_lazy, spread=spread)


def _card_scores(lazy: _Lazy, weights: Mapping[str, float]) -> list[float]:
    """Each candidate's total as if it had no live statistics: its ranking total, except for
    the models with statistics (``lazy.loud``), recomputed from the static scores and the
    columns of empty statistics."""
    scores = list(lazy.scores)
    if not lazy.loud:
        return scores
    wsum = sum(weights.values()) or 1.0
    for i in lazy.loud:
        parts = dict(lazy.static[i])
        for name, col in lazy.cols:
            parts[name] = col[i]
        scores[i] = sum(weights.get(n, 0.0) * v for n, v in parts.items()) / wsum
    return scores
