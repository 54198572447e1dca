"""The server-side scripts: each budget operation is one ``EVALSHA`` (one round trip, atomic
on the server: no other client's command runs between its read and its write).

Keys live under one hash tag, ``{<prefix>}``, so a Redis Cluster keeps them in one slot and a
script may touch all of them. Money is integer nano-USD, as in the SQL backends, stored with
``HINCRBY`` (exact 64-bit integers). Lua numbers are doubles, exact only to 2**53 nano-USD
(about 9 million USD), so the scripts never add money in Lua numbers: :data:`EXACT` splits a
decimal string into (units of 10**9, remainder), both far inside 2**53, and compares sums of
those pairs. Leases are dated by the server's clock (``TIME``) unless the caller passes a
clock (tests freeze one), so hosts with skewed clocks agree on when a lease expires.

Peers checked before writing these (their choices, and why ours differ):

- litellm's proxy rate limiter (``parallel_request_limiter_v3``) runs one script per batch of
  counters, but increments first and compares after, dating windows with the caller's clock:
  a refused request still counts, and a host with a fast clock resets windows early. Ours
  compares before it writes, and dates with the server's ``TIME``.
- Plain "INCR then EXPIRE" limiters lose the expiry when the client dies between the two
  commands; here the whole admission is one script, so there is no "between".
"""

from __future__ import annotations

import hashlib
import json

import attrs
from squirrel_models.slices import SLICE_MODEL, SLICE_OUTCOME, SLICE_PROVIDER

__all__ = ["AUDIT", "BUDGET_KEYS", "CLOCK", "COMMIT", "EXPIRE", "EXPIRY", "LEDGER_PRUNE", "META",
           "RELEASE", "RESERVE", "SETTLE", "SLICE_SYNC", "UNDO", "USAGE", "Script",
           "budget_keys"]


@attrs.frozen
class Script:
    """A Lua script and the SHA1 that ``EVALSHA`` names it by."""

    name: str
    body: str
    sha: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())


#: KEYS of every budget script, in this order.
BUDGET_KEYS = ("committed", "reserved", "leases", "expired", "lease", "ledger", "replayed",
               "undone")


def budget_keys(prefix: str) -> list[str]:
    """The budget's keys under ``prefix``: committed and reserved nano-USD per bucket (hashes),
    open and expired leases by expiry (sorted sets), each lease's data (a hash of JSON), the
    usage ledger (a sorted set by time), the ids of spend replayed after an outage, and the
    tombstones of reservations undone (a sorted set by expiry: a reserve that meets its own
    tombstone holds nothing)."""
    return [f"{{{prefix}}}:budget:{k}" for k in BUDGET_KEYS]


#: Exact sums and comparisons of non-negative integers written as decimal strings.
EXACT = """
local B = 1000000000
local function big(s)
  if not s then return {0, 0} end
  local n = #s
  if n <= 9 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))}
end
local function plus(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= B then hi, lo = hi + 1, lo - B end
  return {hi, lo}
end
local function above(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end
"""

#: ``clock(arg)``: the caller's clock ``arg`` (tests freeze one), or else the server's ``TIME``.
CLOCK = """
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

#: Lease expiry, shared by the budget's and the rate-limit store's scripts: leases are JSON
#: by id in the hash ``data``, open ones scored by their expiry in the sorted set ``open``,
#: expired ones in ``expired``. ``undo(lease)`` gives back what a lease held.
EXPIRY = CLOCK + """
-- Open leases past `now` (at most `max`) become expired: `undo` gives back what they held;
-- they are kept (a late settle still finds them) until forget_expired drops them.
local function expire_leases(open, expired, data, undo, now, max)
  local ids = redis.call('ZRANGEBYSCORE', open, '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
  for i = 1, #ids, 2 do
    local raw = redis.call('HGET', data, ids[i])
    if raw then undo(cjson.decode(raw), ids[i], now) end
    redis.call('ZREM', open, ids[i])
    redis.call('ZADD', expired, ids[i + 1], ids[i])
  end
  return #ids / 2
end
-- Drops up to `max` expired leases that expired at or before `before`.
local function forget_expired(expired, data, before, max)
  local old = redis.call('ZRANGEBYSCORE', expired, '-inf', before, 'LIMIT', 0, max)
  for _, id in ipairs(old) do
    redis.call('HDEL', data, id)
    redis.call('ZREM', expired, id)
  end
end
"""

#: A slice's charge row in the ledger (:func:`squirrel_models.slices.slice_charge_row`): a
#: member as ``budget._member`` writes one, ``at`` as seconds since the epoch; rebuilt from
#: the lease to replace it when a late flush lowers it.
SLICE_ROW = f"""
local function slice_row(id, l)
  return '["slice:' .. id .. '",' .. l.ct .. ',"slice:' .. id .. '",0,' ..
    {json.dumps(json.dumps(SLICE_PROVIDER))} .. ',' .. {json.dumps(json.dumps(SLICE_MODEL))} .. ',' ..
    {json.dumps(json.dumps(SLICE_OUTCOME))} .. ',0,0,0,0,' .. l.cc .. ',null,0.0,' .. l.sc ..
    ',"slice"]'
end
"""

#: The clock, and lease expiry. KEYS as :data:`BUDGET_KEYS`.
LEASES = EXPIRY + SLICE_ROW + """
-- An expired reservation gives its headroom back. An expired slice is charged in full: its
-- process may have spent any of it without flushing (a crash loses room, never money); a
-- ledger row names it, and a late flush lowers that row by what its own rows account for.
local function unhold(l, id, now)
  if l.s then
    for _, f in ipairs(l.f) do
      if l.a ~= '0' then
        redis.call('HINCRBY', KEYS[2], f, '-' .. l.a)
        redis.call('HINCRBY', KEYS[1], f, l.a)
      end
    end
    l.ct, l.cs, l.cc = string.format('%.6f', now), string.format('%.0f', now * 1000000), l.a
    redis.call('ZADD', KEYS[6], l.cs, slice_row(id, l))
    redis.call('HSET', KEYS[5], id, cjson.encode(l))
  elseif l.a ~= '0' then
    for _, f in ipairs(l.f) do redis.call('HINCRBY', KEYS[2], f, '-' .. l.a) end
  end
end
-- Expired leases keep their data until reconcile forgets them: a late settle still commits
-- its spend once.
local function expire(now, max)
  return expire_leases(KEYS[3], KEYS[4], KEYS[5], unhold, now, max)
end
"""

#: ``drop(id)``: forget a lease, an open one giving its headroom back; 1 if there was one.
DROP = """
local function drop(id)
  local raw = redis.call('HGET', KEYS[5], id)
  if not raw then return 0 end
  local l = cjson.decode(raw)
  if redis.call('ZREM', KEYS[3], id) == 1 and l.a ~= '0' then
    for _, f in ipairs(l.f) do redis.call('HINCRBY', KEYS[2], f, '-' .. l.a) end
  end
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZREM', KEYS[4], id)
  return 1
end
"""

RESERVE = Script("reserve", EXACT + LEASES + """
-- ARGV: id, amount, ttl, now ('' = the server's), request id, expire batch, then
-- (field, limit) pairs. Returns {1, expires_at} or {0, index, committed, reserved}.
local id, amount = ARGV[1], ARGV[2]
local held = redis.call('HGET', KEYS[5], id)
if held then return {1, cjson.decode(held).e} end  -- a retried call reserves nothing twice
-- Its caller gave up on it and UNDO ran first: this late reserve holds nothing.
if redis.call('ZSCORE', KEYS[8], id) then return {2} end
local now = clock(ARGV[4])
local want = big(amount)
local fields = {}
for i = 7, #ARGV, 2 do fields[#fields + 1] = ARGV[i] end
local function refusal()
  for i, f in ipairs(fields) do
    local c = redis.call('HGET', KEYS[1], f) or '0'
    local r = redis.call('HGET', KEYS[2], f) or '0'
    if above(plus(plus(big(c), big(r)), want), big(ARGV[6 + 2 * i])) then return {i, c, r} end
  end
  return nil
end
local bad = refusal()
-- Leases of a dead process are past expiry: give their headroom back and look again.
if bad and expire(now, tonumber(ARGV[6])) > 0 then bad = refusal() end
if bad then return {0, bad[1], bad[2], bad[3]} end
if amount ~= '0' then
  for _, f in ipairs(fields) do redis.call('HINCRBY', KEYS[2], f, amount) end
end
local expires = now + tonumber(ARGV[3])
local e = string.format('%.6f', expires)
redis.call('HSET', KEYS[5], id, cjson.encode({a = amount, f = fields, e = e, q = ARGV[5]}))
redis.call('ZADD', KEYS[3], expires, id)
return {1, e}
""")

SETTLE = Script("settle", """
-- ARGV: id, amount, ledger row ('' = none), its score. Commits amount for an open or
-- expired lease and forgets it; returns the lease's amount, or nil for an unknown id
-- (already settled or released: nothing is committed, no row written).
local raw = redis.call('HGET', KEYS[5], ARGV[1])
if not raw then return false end
local l = cjson.decode(raw)
local open = redis.call('ZREM', KEYS[3], ARGV[1]) == 1
for _, f in ipairs(l.f) do
  if open and l.a ~= '0' then redis.call('HINCRBY', KEYS[2], f, '-' .. l.a) end
  if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], f, ARGV[2]) end
end
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3]) end
return l.a
""")

RELEASE = Script("release", DROP + """
-- ARGV: id. Drops the lease; an open one gives its headroom back. Idempotent.
return drop(ARGV[1])
""")

UNDO = Script("undo", CLOCK + DROP + """
-- ARGV: now ('' = the server's), then (id, keep seconds) pairs: reservations whose callers
-- gave up waiting (a hung server may still run their reserve). Each lease is dropped if its
-- reserve ran, and a tombstone kept for `keep` s makes a reserve that runs later hold
-- nothing: whichever runs first, nothing stays held. Idempotent; returns the leases dropped.
local now = clock(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)
local n = 0
for i = 2, #ARGV, 2 do
  n = n + drop(ARGV[i])
  redis.call('ZADD', KEYS[8], now + tonumber(ARGV[i + 1]), ARGV[i])
end
return n
""")

USAGE = Script("usage", LEASES + """
-- ARGV: now, expire batch, fields... Expired leases first; then committed, reserved of
-- each field in order (strings).
expire(clock(ARGV[1]), tonumber(ARGV[2]))
local out = {}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i]) or '0'
end
return out
""")

EXPIRE = Script("expire", LEASES + """
-- ARGV: now, batch, retention ('' = keep). Expires up to `batch` open leases past now, drops
-- tombstones past their time and forgets expired leases older than now - retention; returns
-- how many it expired.
local now = clock(ARGV[1])
local n = expire(now, tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)  -- tombstones past their time
if ARGV[3] ~= '' then
  forget_expired(KEYS[4], KEYS[5], now - tonumber(ARGV[3]), tonumber(ARGV[2]))
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - tonumber(ARGV[3]))
end
return n
""")

COMMIT = Script("commit", LEASES + """
-- ARGV: id, amount, ledger row ('' = none), its score, then fields. Commits spend settled
-- in process memory while Redis was unreachable (fail_open), once per id.
local t = clock('')
if redis.call('ZADD', KEYS[7], 'NX', t, ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '0' then
  for i = 5, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[2]) end
end
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3]) end
return 1
""")

AUDIT = Script("audit", """
-- One snapshot: {reserved (flat hash), {open id, lease json}..., expired count}.
local open = redis.call('ZRANGE', KEYS[3], 0, -1)
local leases = {}
for _, id in ipairs(open) do
  leases[#leases + 1] = redis.call('HGET', KEYS[5], id) or ''
end
return {redis.call('HGETALL', KEYS[2]), leases, redis.call('ZCARD', KEYS[4])}
""")

LEDGER_PRUNE = Script("ledger_prune", """
-- ARGV: before (score, exclusive), batch. Deletes up to `batch` of the oldest ledger rows
-- before it and returns them (the caller sums their cost).
local rows = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. ARGV[1], 'LIMIT', 0,
                        tonumber(ARGV[2]))
for _, m in ipairs(rows) do redis.call('ZREM', KEYS[6], m) end
return rows
""")

META = Script("meta", """
-- KEYS[1]: the meta hash. ARGV: application, version. Claims an empty prefix; returns
-- what it holds.
redis.call('HSETNX', KEYS[1], 'application', ARGV[1])
redis.call('HSETNX', KEYS[1], 'version', ARGV[2])
return redis.call('HMGET', KEYS[1], 'application', 'version')
""")

SLICE_SYNC = Script("slice_sync", EXACT + LEASES + """
-- ARGV: now ('' = the server's), lease seconds, expire batch, then one JSON object per
-- slice (squirrel_models.slices.SliceSync; money as decimal strings): i lease id, f fields,
-- l their limits, sp spent, ex excess, nd need, w want, fr fraction, c close, k known,
-- h holds (absent: None), sc the scopes (JSON), r rows {number, member, score}. Applies each flush as the SQLite
-- backend's Store.slice_sync does. Slice amounts are Lua doubles, exact to 2**53 nano-USD
-- (about 9 million USD); a slice's room is capped at 2**52.
-- Returns per slice {amount, spent, excess, rows upto, room, expired, refusal {i, c, r}}.
local now, lease_s = clock(ARGV[1]), tonumber(ARGV[2])
expire(now, tonumber(ARGV[3]))
local CAP = 4503599627370496
local function str(x) return string.format('%.0f', x) end
local function left(limit, f)  -- limit - committed - reserved, exact when small
  local c = redis.call('HGET', KEYS[1], f) or '0'
  local r = redis.call('HGET', KEYS[2], f) or '0'
  local lim, used = big(limit), plus(big(c), big(r))
  return math.min((lim[1] - used[1]) * B + (lim[2] - used[2]), CAP), c, r
end
local out = {}
for i = 4, #ARGV do
  local s = cjson.decode(ARGV[i])
  local id = s.i
  local raw = redis.call('HGET', KEYS[5], id)
  local l, state, amount, spent, excess, upto
  if raw then
    l = cjson.decode(raw)
    if not l.s then return redis.error_reply('ERR ' .. id .. ' is a reservation, not a slice') end
    state = redis.call('ZSCORE', KEYS[3], id) and 0 or 1
    amount, spent, excess, upto = tonumber(l.a), tonumber(l.sp), tonumber(l.ex), l.u
  elseif s.k then
    -- Flushed before, then forgotten (expired longer ago than the retention): its room was
    -- charged in full long ago.
    state, amount, spent, excess, upto = 1, 0, tonumber(s.sp), 0, 0
  else
    l = {a = '0', f = s.f, s = 1, q = 'slice', sp = '0', ex = '0', u = 0, sc = s.sc}
    state, amount, spent, excess, upto = 0, 0, 0, 0, 0
  end
  local sp, ex = tonumber(s.sp), tonumber(s.ex)
  local d_spent, d_excess = math.max(sp - spent, 0), math.max(ex - excess, 0)
  local top = upto
  for _, row in ipairs(s.r) do
    if row[1] > upto then redis.call('ZADD', KEYS[6], row[3], row[2]) end
    if row[1] > top then top = row[1] end
  end
  local moved, add = 0, 0
  if state == 0 then
    -- What the process reports is committed (money is never hidden); the room it held is
    -- what leaves reserved.
    moved, add = math.min(d_spent, amount), d_spent + d_excess
    amount = amount - moved
  else
    -- Charged in full at expiry: what was spent within the slice is in that charge already,
    -- so its row gives that much to the requests' own rows. Then, from a process that knows
    -- it was charged (h), the charge left is at most what its open reservations hold.
    local covered, refund = 0, 0
    if l and l.cc and (d_spent > 0 or s.h) then
      local left = tonumber(l.cc)
      covered = math.min(d_spent, left)
      if s.h then refund = math.max(left - covered - tonumber(s.h), 0) end
      if covered + refund > 0 then
        redis.call('ZREM', KEYS[6], slice_row(id, l))
        l.cc = str(left - covered - refund)
        redis.call('ZADD', KEYS[6], l.cs, slice_row(id, l))
      end
    end
    add = d_spent - covered + d_excess - refund
  end
  for _, f in ipairs(s.f) do
    if add ~= 0 then redis.call('HINCRBY', KEYS[1], f, str(add)) end
    if moved > 0 then redis.call('HINCRBY', KEYS[2], f, str(-moved)) end
  end
  local room, refusal = 0, {}
  if state == 0 then
    local rooms = {}
    room = CAP
    for j, f in ipairs(s.f) do
      local x, c, r = left(s.l[j], f)
      rooms[j] = {x, c, r}
      room = math.min(room, x)
    end
    room = math.max(room, 0)
    local need, want = tonumber(s.nd), tonumber(s.w)
    local target  -- squirrel_models.slices.slice_target
    if want <= amount then
      target = math.max(want, 0)
    else
      local extra = math.min(want - amount, room,
                             math.max(need - amount, math.floor(room * s.fr)))
      if amount + extra >= need then target = amount + extra end
    end
    if not target then
      for j = 1, #s.f do
        if rooms[j][1] < need - amount then refusal = {j, rooms[j][2], rooms[j][3]} break end
      end
      target = amount
    end
    if target ~= amount then
      for _, f in ipairs(s.f) do redis.call('HINCRBY', KEYS[2], f, str(target - amount)) end
      room = room - math.max(target - amount, 0)
      amount = target
    end
  end
  if state == 0 and s.c and amount == 0 then
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZREM', KEYS[3], id)
  elseif l then
    l.a, l.sp, l.ex, l.u = str(amount), str(math.max(sp, spent)), str(math.max(ex, excess)), top
    if state == 0 then
      local e = now + lease_s
      l.e = string.format('%.6f', e)
      redis.call('ZADD', KEYS[3], e, id)
    end
    redis.call('HSET', KEYS[5], id, cjson.encode(l))
  end
  out[#out + 1] = {str(state == 0 and amount or 0), str(math.max(sp, spent)),
                   str(math.max(ex, excess)), top, str(math.max(room, 0)), state, refusal}
end
return out
""")
