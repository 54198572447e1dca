"""Reports over the usage ledger (one row per attempt), shared by every ledger backend.

``summarize`` groups rows by ``model``, ``provider``, ``scope`` or ``day`` and gives, per
group: requests, attempts, errors, fallbacks (requests that needed more than one attempt),
tokens, cost (unknown costs counted apart, never as $0) and cost per request. A row of money
charged without a request (:data:`CHARGE_OUTCOME`: an expired budget slice charged in full)
adds to the cost, never to the requests.

It is the reference: a backend that aggregates in its database (``summarize`` of
:class:`~squirrel_models.budget.LedgerSummaries`) must return exactly what it returns for the
same rows, and builds each group with :func:`summary_row` and orders them with
:func:`sort_summary`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from .budget import LedgerRow

__all__ = ["CHARGE_OUTCOME", "GROUPINGS", "UNREPORTED", "check_grouping", "render", "sort_summary",
           "summarize", "summary_row"]

#: The outcome of a ledger row that is money charged, not a request's attempt (the request id
#: ``slice:<lease>`` of an expired slice): it counts in cost, not in requests or attempts.
CHARGE_OUTCOME = "charged"
GROUPINGS = ("model", "provider", "scope", "day")
COLUMNS = ("group", "requests", "attempts", "errors", "error_rate", "fallbacks",
           "fallback_rate", "input_tokens", "output_tokens", "unreported_tokens", "cost_usd",
           "unpriced_attempts", "cost_per_request")
#: The usage sources whose tokens no provider reported: counted by us with the model's
#: tokenizer, estimated (an upper bound), or cut (what ``[budget] charge_unanswered``
#: assumed an attempt whose answer never came used). ``unreported_tokens`` sums their input
#: and output.
UNREPORTED = ("counted", "estimated", "cut")


def check_grouping(by: str) -> None:
    """Raise ValueError unless ``by`` is one of :data:`GROUPINGS`."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUPINGS)}")


def summary_row(group: str, *, requests: int, attempts: int, errors: int, fallbacks: int,
                input_tokens: int, output_tokens: int, cost: Decimal, unpriced: int,
                unreported_tokens: int = 0) -> dict[str, Any]:
    """One group of a summary from its totals (rates and cost per request derived here).
    ``unreported_tokens``: how many of the input and output tokens no provider reported (the
    rows whose ``usage_source`` is ``counted`` or ``estimated``)."""
    return {
        "group": group, "requests": requests, "attempts": attempts, "errors": errors,
        "error_rate": round(errors / attempts, 4) if attempts else 0.0,
        "fallbacks": fallbacks, "fallback_rate": round(fallbacks / requests, 4) if requests else 0.0,
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "unreported_tokens": unreported_tokens, "cost_usd": cost, "unpriced_attempts": unpriced,
        "cost_per_request": (cost / requests) if requests else Decimal(0),
    }


def sort_summary(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``groups`` sorted by cost (highest first), then name; in place, and returned."""
    groups.sort(key=lambda d: (-d["cost_usd"], d["group"]))
    return groups


def _keys(row: LedgerRow, by: str) -> Sequence[str]:
    if by == "model":
        return (row.model,)
    if by == "provider":
        return (row.provider,)
    if by == "scope":
        return row.scopes or ("(none)",)
    if by == "day":
        return (row.at.strftime("%Y-%m-%d"),)
    raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUPINGS)}")


def summarize(rows: Iterable[LedgerRow], by: str = "model") -> list[dict[str, Any]]:
    """Aggregate ledger rows by ``by``; one dict per group, sorted by cost then name."""
    check_grouping(by)
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "requests": set(), "attempts": 0, "errors": 0, "input_tokens": 0,
        "output_tokens": 0, "unreported": 0, "cost": Decimal(0), "unpriced": 0})
    per_request: dict[str, int] = defaultdict(int)
    rows = list(rows)
    for r in rows:
        if r.outcome in ("ok", "error"):
            per_request[r.request_id] += 1
    for r in rows:
        for key in _keys(r, by):
            g = groups[key]
            if r.outcome != CHARGE_OUTCOME:
                g["requests"].add(r.request_id)
            if r.outcome in ("ok", "error"):
                g["attempts"] += 1
            if r.outcome == "error":
                g["errors"] += 1
            g["input_tokens"] += r.input_tokens
            g["output_tokens"] += r.output_tokens
            if r.usage_source in UNREPORTED:
                g["unreported"] += r.input_tokens + r.output_tokens
            if r.cost is not None:
                g["cost"] += r.cost
            elif r.outcome in ("ok", "error"):
                g["unpriced"] += 1
    out = []
    for key, g in groups.items():
        fallbacks = sum(1 for rid in g["requests"] if per_request.get(rid, 0) > 1)
        out.append(summary_row(key, requests=len(g["requests"]), attempts=g["attempts"],
                               errors=g["errors"], fallbacks=fallbacks,
                               input_tokens=g["input_tokens"], output_tokens=g["output_tokens"],
                               cost=g["cost"], unpriced=g["unpriced"],
                               unreported_tokens=g["unreported"]))
    sort_summary(out)
    return out


def _cell(v: Any) -> str:
    if isinstance(v, Decimal):
        # every digit, as other human output writes money ("0.000000" hid a $0.0000004
        # request); a quotient (cost per request) to ten places
        if v.as_tuple().exponent < -10:  # type: ignore[operator]
            v = v.quantize(Decimal("1e-10"))
        return f"${v.normalize():f}"
    if isinstance(v, float):
        return f"{v:.2%}"
    return str(v)


def render(summary: list[dict[str, Any]], fmt: str = "table") -> str:
    """``summary`` as ``table``, ``json`` or ``csv``."""
    # Money in JSON and CSV: decimal dollars as text, never an exponent ("0.0000001").
    if fmt == "json":
        return json.dumps([{k: (format(v, "f") if isinstance(v, Decimal) else v)
                            for k, v in row.items()} for row in summary], default=str, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in summary:
            w.writerow({k: (format(v, "f") if isinstance(v, Decimal) else v)
                        for k, v in row.items()})
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; use table, json or csv")
    if not summary:
        return "(no usage recorded)"
    cells = [[_cell(row[c]) for c in COLUMNS] for row in summary]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                       for i, c in enumerate(COLUMNS))]
    lines += ["  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i])
                        for i, v in enumerate(r)) for r in cells]
    return "\n".join(lines)
