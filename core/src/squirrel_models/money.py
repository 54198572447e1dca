"""The decimal context of every amount the library computes: costs, budget totals, nano-USD
conversions.

Decimal arithmetic rounds to the *current* context, which an application may have narrowed
(``decimal.getcontext().prec = 3``, for its own figures). Computed in it, an in-memory budget's
total stopped growing at 1.00 USD while 70 USD were spent against a 10 USD limit, every request
admitted. The library computes money in :data:`MONEY` instead, never the caller's context."""

from __future__ import annotations

import decimal

__all__ = ["MONEY"]

#: 60 digits hold any sum of costs below the largest budget limit (10**9 USD) to far below a
#: nano-USD; exact results (all of them, for prices written as decimals) are the same as in
#: Python's default context, and an invalid operation raises rather than giving NaN.
MONEY = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, Emin=-999_999, Emax=999_999,
                        traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow])
