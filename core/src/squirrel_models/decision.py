"""What a ranking decided: :class:`Decision` (every candidate with its total and per-rule
scores, every excluded model with the reason, and, once answered, the attempts), its
:class:`Candidate` objects, and the lazy ranking behind them, which builds candidates and
sorts the order only when they are read."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, overload

import attrs

from .trusted import builder
from .types import AttemptRecord, ModelCard, ModelRequirements

if TYPE_CHECKING:
    from .spread import SpreadDraw

__all__ = ["Candidate", "Decision", "Ranked"]


@attrs.frozen(slots=True)
class Candidate:
    """A model that passed the hard filter, with its weighted total and each rule's score."""

    card: ModelCard
    score: float
    scores: Mapping[str, float]

    @property
    def model_id(self) -> str:
        return self.card.id


class _KeyedCol:
    """A rule's scores by card key (see ``ScoringRule.card_key``): ``col[i]`` is card i's."""

    __slots__ = ("by_key", "keys")

    def __init__(self, keys: list[object], by_key: dict[object, float]) -> None:
        self.keys, self.by_key = keys, by_key

    def __getitem__(self, i: int) -> float:
        return self.by_key[self.keys[i]]


_Col = list[float] | _KeyedCol


class _Lazy:
    """What :meth:`ModelSelector.rank` computed, from which candidates are built on demand.

    The order is sorted when first needed beyond the best model: ``first`` finds the best in
    one pass (the first of the highest scores in id order, which is what the stable sort
    puts first), so a request whose first model answers never sorts the rest. With a single
    candidate its place needs no score: ``fill`` (the selector, the cache entry and the
    candidate's statistics snapshot, immutable) computes the scores when first read."""

    __slots__ = ("_cols", "_fill", "_loud", "_order", "_scores", "cards", "keep", "static")

    def __init__(self, cards: Sequence[ModelCard], keep: Sequence[int], scores: list[float] | None,
                 static: list[dict[str, float]], cols: list[tuple[str, _Col]] | None,
                 loud: dict[int, dict[str, float]] | None, order: Sequence[int] | None = None,
                 fill: Callable[[], tuple[list[float], list[tuple[str, _Col]],
                                          dict[int, dict[str, float]]]] | None = None) -> None:
        self.cards, self.keep, self._scores = cards, keep, scores
        self.static, self._cols, self._loud = static, cols, loud
        self._fill = fill
        # ``order``: set by whoever reordered a ranking (load spreading), used as given.
        self._order: list[int] | None = None if order is None else list(order)

    def _filled(self) -> None:
        fill, self._fill = self._fill, None
        assert fill is not None
        self._scores, self._cols, self._loud = fill()

    @property
    def scores(self) -> list[float]:
        if self._fill is not None:
            self._filled()
        assert self._scores is not None
        return self._scores

    @property
    def cols(self) -> list[tuple[str, _Col]]:
        if self._fill is not None:
            self._filled()
        assert self._cols is not None
        return self._cols

    @property
    def loud(self) -> dict[int, dict[str, float]]:
        if self._fill is not None:
            self._filled()
        assert self._loud is not None
        return self._loud

    @property
    def order(self) -> list[int]:
        if self._order is None:
            if len(self.keep) < 2:
                self._order = list(self.keep)
            else:
                # Cards are in id order and the sort is stable: ties stay in id order.
                self._order = sorted(self.keep, key=self.scores.__getitem__, reverse=True)
        return self._order

    def first(self) -> int | None:
        if self._order is not None:
            return self._order[0] if self._order else None
        keep = self.keep
        if len(keep) < 2:
            return keep[0] if keep else None
        scores = self.scores
        if len(keep) == len(scores):  # every card: the first of the highest, at C speed
            return scores.index(max(scores))
        return max(keep, key=scores.__getitem__)

    def candidate(self, i: int) -> Candidate:
        scores = self.loud.get(i)
        if scores is None:
            scores = dict(self.static[i])
            for name, col in self.cols:
                scores[name] = col[i]
        return Candidate(self.cards[i], self.scores[i], scores)


class Ranked(Sequence[ModelCard]):
    """A decision's model cards, best first, as a read-only sequence that builds nothing up
    front: the first card costs one pass over the scores, the rest one sort, when asked."""

    __slots__ = ("_lazy",)

    def __init__(self, lazy: _Lazy) -> None:
        self._lazy = lazy

    def __len__(self) -> int:
        return len(self._lazy.keep)

    def __bool__(self) -> bool:
        return bool(self._lazy.keep)

    @overload
    def __getitem__(self, i: int) -> ModelCard: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[ModelCard]: ...

    def __getitem__(self, i: int | slice) -> ModelCard | Sequence[ModelCard]:
        lazy = self._lazy
        if isinstance(i, slice):
            return tuple(lazy.cards[j] for j in lazy.order[i])
        if i == 0 and lazy.keep:
            first = lazy.first()
            assert first is not None
            return lazy.cards[first]
        return lazy.cards[lazy.order[i]]

    def __iter__(self) -> Iterator[ModelCard]:
        lazy = self._lazy
        first = lazy.first()
        if first is None:
            return
        cards = lazy.cards
        yield cards[first]
        for j in lazy.order[1:]:
            yield cards[j]


@attrs.frozen(eq=False)
class Decision:
    """Why models were ranked as they were. ``candidates`` best first.

    Candidates are built when first read (``chosen``, ``cards`` and ``ranked`` build only
    what they need), so ranking thousands of models stays cheap for callers that take the
    first few.
    """

    _candidates: tuple[Candidate, ...] | None = attrs.field(alias="candidates")
    excluded: Mapping[str, str]
    weights: Mapping[str, float]
    requirements: ModelRequirements
    cache_hit: bool = False
    duration_s: float = 0.0
    _lazy: _Lazy | None = attrs.field(default=None, repr=False, alias="_lazy")
    #: Set on the decision an answer carries (see :meth:`answered`): the model that answered
    #: and every attempt made, failed ones included.
    answered_by: str | None = None
    attempts: tuple[AttemptRecord, ...] = ()
    #: When equivalent candidates shared the load: the draw that put the first one first
    #: (a :class:`~squirrel_models.spread.SpreadDraw`), else None.
    spread: SpreadDraw | None = None
    _cards: tuple[ModelCard, ...] | None = attrs.field(default=None, init=False, repr=False)

    def answered(self, model_id: str, attempts: Iterable[AttemptRecord]) -> Decision:
        """This decision, recording that ``model_id`` answered after ``attempts``."""
        # Built directly: attrs.evolve introspects every field on each call.
        return Decision(self._candidates, self.excluded, self.weights, self.requirements,
                        self.cache_hit, self.duration_s, self._lazy, model_id, tuple(attempts),
                        self.spread)

    def has_candidates(self) -> bool:
        """Whether any model is ranked (builds nothing: what a request asks first)."""
        lazy = self._lazy
        if lazy is not None and self._candidates is None:
            return bool(lazy.keep)
        return bool(self.cards)

    def _answer(self, model_id: str, attempts: tuple[AttemptRecord, ...]) -> Decision:
        """:meth:`answered`, recorded on this decision itself: for the manager's own
        decision of a request, which nothing else holds (one object less per request)."""
        object.__setattr__(self, "answered_by", model_id)
        object.__setattr__(self, "attempts", attempts)
        return self

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        if self._candidates is None:
            lazy = self._lazy
            assert lazy is not None
            object.__setattr__(self, "_candidates",
                               tuple(lazy.candidate(i) for i in lazy.order))
        return self._candidates  # type: ignore[return-value]

    @property
    def cards(self) -> tuple[ModelCard, ...]:
        """The candidates' model cards, best first (built once)."""
        cards = self._cards
        if cards is None:
            if self._candidates is None and self._lazy is not None:
                lazy = self._lazy
                cards = tuple(map(lazy.cards.__getitem__, lazy.order))
            else:
                cards = tuple(c.card for c in self.candidates)
            object.__setattr__(self, "_cards", cards)
        return cards

    @property
    def ranked(self) -> Sequence[ModelCard]:
        """The same cards as :attr:`cards`, as a sequence that sorts the candidates only if
        more than the best one is read (what the fallback chain takes)."""
        lazy = self._lazy
        if self._cards is None and self._candidates is None and lazy is not None:
            keep = lazy.keep
            if len(keep) == 1:  # one candidate (the usual request): its card, nothing to sort
                return (lazy.cards[keep[0]],)
            return Ranked(lazy)
        return self.cards

    @property
    def chosen(self) -> Candidate | None:
        if self._candidates is None and self._lazy is not None:
            first = self._lazy.first()
            return self._lazy.candidate(first) if first is not None else None
        return self.candidates[0] if self.candidates else None

    def _key(self) -> tuple[object, ...]:
        return (self.candidates, dict(self.excluded), dict(self.weights), self.requirements,
                self.cache_hit, self.duration_s)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def _count(self) -> int:
        """How many candidates are ranked, without building them (the gateway's reason header
        is read for every answer; building every candidate to count them cost more than the
        rest of the line)."""
        lazy = self._lazy
        if self._candidates is None and lazy is not None:
            return len(lazy.keep)
        return len(self.candidates)

    def reason(self) -> str:
        """One line: which model answered and why (its rank and per-rule scores), and each
        failed attempt before it (model, error type, short message). Before an answer (or
        when the first candidate answered at once) it starts with ``score``."""
        best = self.chosen
        if best is None:
            return "no candidate"
        answered = self.answered_by or best.card.id
        ranked = self.candidates if answered != best.card.id else (best,)
        rank, cand = next(((i, c) for i, c in enumerate(ranked, 1) if c.card.id == answered),
                          (0, None))
        count = self._count()
        if cand is None:  # an answer from outside the ranking (a fallback graph edge)
            text = f"answered by {answered} (not in the ranking; {best.card.id} was first)"
        else:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cand.scores.items())
            text = f"score {cand.score:.3f} ({parts})"
            if rank == 1:
                others = count - 1
                text += f"; beat {others} other candidate(s)" if others else "; the only candidate"
            else:
                text = (f"answered by {answered}, ranked #{rank} of {count}: "
                        f"{text}; {best.card.id} was first")
        if self.excluded:
            text += f", {len(self.excluded)} excluded"
        if self.spread is not None:
            text += f"; {self.spread.describe()}"
        failed = [a for a in self.attempts if a.outcome != "ok"]
        if failed:
            text += f"; after {len(failed)} failed attempt(s): " + "; ".join(
                _attempt_line(a) for a in failed)
        return text

    def explain(self, limit: int = 20) -> str:
        """A text table of the ranking and the exclusions."""
        rules = list(self.weights)
        # Each column as wide as its rule's name: plugin rules sharing a prefix stay apart.
        cols = [(r, max(11, len(r))) for r in rules]
        head = f"{'#':>3}  {'model':<40} {'total':>6}  " + "  ".join(
            f"{r:>{w}}" for r, w in cols)
        lines = [head, f"{'':>3}  {'(weights)':<40} {'':>6}  " + "  ".join(
            f"{self.weights[r]:>{w}.2f}" for r, w in cols)]
        for i, c in enumerate(self.candidates[:limit], 1):
            # An unpriced model ranks only when the configuration allows it: say so.
            name = c.card.id if c.card.price is not None else f"{c.card.id} (unpriced)"
            lines.append(f"{i:>3}  {name:<40} {c.score:>6.3f}  " + "  ".join(
                f"{c.scores.get(r, 0.0):>{w}.3f}" for r, w in cols))
        if len(self.candidates) > limit:
            lines.append(f"     ... {len(self.candidates) - limit} more")
        if self.spread is not None:
            lines.append(f"spread: {self.spread.describe()}")
        if self.excluded:
            lines.append("excluded:")
            lines.extend(f"     {k}: {v}" for k, v in sorted(self.excluded.items())[:limit])
            if len(self.excluded) > limit:
                lines.append(f"     ... {len(self.excluded) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "candidates": [{"model": c.card.id, "score": round(c.score, 6),
                            "scores": {k: round(v, 6) for k, v in c.scores.items()},
                            "unpriced": c.card.price is None}
                           for c in self.candidates],
            "excluded": dict(self.excluded),
            "weights": dict(self.weights),
            "cache_hit": self.cache_hit,
        }
        if self.spread is not None:
            out["spread"] = self.spread.to_dict()
        if self.answered_by is not None:
            out["answered_by"] = self.answered_by
            out["attempts"] = [_attempt_dict(a) for a in self.attempts]
        return out


#: A :class:`Decision` as the selector builds one (see ``trusted.builder``).
new_decision = builder(Decision)


def _attempt_line(a: AttemptRecord) -> str:
    """``1. p/m: ServerError: HTTP 500`` (the message's first line, cut at 120 characters)."""
    from .secrets import redact

    if a.error is None:
        return f"{a.number}. {a.model_id}: {a.outcome}" + (f" ({a.note})" if a.note else "")
    msg = redact(str(a.error)).strip().splitlines()
    short = msg[0] if msg else ""
    if len(short) > 120:
        short = short[:119] + "\u2026"
    return f"{a.number}. {a.model_id}: {type(a.error).__name__}" + (f": {short}" if short else "")


def _attempt_dict(a: AttemptRecord) -> dict[str, object]:
    from .secrets import redact

    return {"number": a.number, "model": a.model_id, "outcome": a.outcome,
            "error_type": None if a.error is None else type(a.error).__name__,
            "error": None if a.error is None else redact(str(a.error)),
            "note": a.note or None}
