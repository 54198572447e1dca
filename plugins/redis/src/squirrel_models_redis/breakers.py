"""The ``redis`` breaker store: circuit-breaker cooldowns shared by many instances
(``[circuit_breaker] shared = "redis"``; see :mod:`squirrel_models.sharedbreakers`).

One hash, ``{<prefix>}:breakers``: model id -> the end of its hold on the Redis server's clock.
``publish`` is one script (the later end wins, dated by ``TIME``, so hosts with skewed clocks
agree); ``fetch`` is one script that forgets the holds that are over and returns the seconds
left of the others. The core treats the store as advisory: a failure here is logged by the
manager and each instance keeps its own breakers.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import attrs
from squirrel_models.errors import ConfigError
from squirrel_models.secrets import Secret

from .client import RedisClient
from .client import text as _text
from .options import RedisOptions, check_unused
from .scripts import CLOCK, Script

__all__ = ["BR_FETCH", "BR_PUBLISH", "RedisBreakerStore"]

BR_PUBLISH = Script("br_publish", CLOCK + """
-- ARGV: model id, seconds, now. Holds the model until now + seconds (a later end is kept).
local ends = clock(ARGV[3]) + tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if ends > cur then redis.call('HSET', KEYS[1], ARGV[1], string.format('%.6f', ends)) end
return 1
""")

BR_FETCH = Script("br_fetch", CLOCK + """
-- ARGV: now. Forgets the holds that are over; returns {model id, seconds left, ...}.
local now = clock(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local left = tonumber(all[i + 1]) - now
  if left > 0 then
    out[#out + 1] = all[i]
    out[#out + 1] = string.format('%.6f', left)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
""")


@attrs.define
class RedisBreakerStore:
    """Breaker cooldowns in Redis (see the module docstring). ``clock`` (seconds) replaces
    the server's clock when set (tests)."""

    options: RedisOptions = attrs.field(factory=RedisOptions)
    clock: Callable[[], float] | None = None
    url: Secret | None = attrs.field(default=None, kw_only=True)
    _client: RedisClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.options.slices:
            raise ConfigError("only a budget serves leased slices", field="circuit_breaker.shared_options.slices")
        advisory = ("shared breaker state is advisory: while Redis is down each instance keeps "
                    "its own breakers, and requests go on")
        check_unused(self.options, "circuit_breaker.shared_options", {
            "on_unavailable": advisory, "unavailable_retry_s": advisory,
            "expired_retention_s": "breaker holds have no leases",
            "ledger_retention_days": "breaker holds keep no ledger"})
        # advisory holds: a server that evicts keys may drop one (durable=False)
        self._client = RedisClient(self.options, self.url, "circuit_breaker.shared_options",
                                   durable=False)

    def _now(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    async def publish(self, model_id: str, seconds: float) -> None:
        await self._client.eval("publish", BR_PUBLISH, [self._client.key("breakers")],
                                [model_id, repr(float(seconds)), self._now()])

    async def fetch(self) -> dict[str, float]:
        flat = await self._client.eval("fetch", BR_FETCH, [self._client.key("breakers")],
                                       [self._now()])
        return {_text(flat[i]): float(_text(flat[i + 1])) for i in range(0, len(flat), 2)}

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._client.aclose()
