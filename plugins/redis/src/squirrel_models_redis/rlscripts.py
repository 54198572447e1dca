"""The rate-limit store's scripts: each admission, settlement and release is one ``EVALSHA``.

Each ``rpm``/``tpm`` count (one per scope and kind) is an exact sliding log, as in the core's
``memory`` store: a sorted set of the admissions still in the window, scored by their time on
the server's clock, each member ``<state><amount>:<lease id>:<charge index>`` (state ``r``:
reserved, not yet settled; ``s``: settled), with the running sums ``used`` and ``reserved``
in one hash. An admission leaves its log once, when a later call trims what is older than
the window, so admitting costs O(1) amortized. Concurrency slots are counters in the same
hash. Leases (JSON, by id) and their expiries (a sorted set) let a killed instance's slots
come back.

KEYS: ``sums`` (hash), ``leases`` (hash: id -> JSON), ``open`` and ``expired`` (sorted sets:
id -> expiry), then one log per ``rpm``/``tpm`` charge, in the order of the charges, and last
``undone`` (sorted set: id -> until when a lease given up on must not be admitted). All share
the prefix's hash tag (one Redis Cluster slot).
"""

from __future__ import annotations

from .scripts import EXPIRY, Script

__all__ = ["RL_EXPIRE", "RL_RELEASE", "RL_RESERVE", "RL_SETTLE", "RL_UNDO", "RL_USAGE"]

_COMMON = EXPIRY + """
local function num(v) return tonumber(v or '0') or 0 end
local function parse(m)  -- state, amount of a log member
  local amount = string.match(m, '^.(%d+):')
  return string.sub(m, 1, 1), amount
end
local function dec(field, amount)  -- HINCRBY refuses '-0'
  if amount ~= '0' then redis.call('HINCRBY', KEYS[1], field, '-' .. amount) end
end
-- Drop the admissions of a count at or before `cutoff`.
local function trim(key, field, cutoff)
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff)
  if #old == 0 then return end
  for _, m in ipairs(old) do
    local state, amount = parse(m)
    dec(field .. ':u', amount)
    if state == 'r' then dec(field .. ':r', amount) end
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
end
-- Seconds until `need` more fits in a count holding `used` (-1: never).
local function retry_in(key, used, need, limit, window, now)
  if need > limit then return -1 end
  local excess = used + need - limit
  local freed = 0
  local log = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #log, 2 do
    local _, amount = parse(log[i])
    freed = freed + tonumber(amount)
    if freed >= excess then return math.max(tonumber(log[i + 1]) + window - now, 0) end
  end
  return window
end
local function free_slots(l)  -- l.s is null for a lease without a slot (rpm and tpm only)
  if type(l.s) ~= 'table' then return end
  for _, scope in ipairs(l.s) do redis.call('HINCRBY', KEYS[1], 'c\\31' .. scope, -1) end
end
-- Open leases past `now` (at most `max`) free their slots; their admissions keep counting.
local function expire(now, max)
  return expire_leases(KEYS[3], KEYS[4], KEYS[2], free_slots, now, max)
end
local function fmt(x) return string.format('%.6f', x) end
"""

RL_RESERVE = Script("rl_reserve", _COMMON + """
-- ARGV: id, tokens, ttl, request id, now, expire batch, n, then per charge: kind, count
-- field, scope, limit, window. Returns {1, at, expires_at}, {2} for a lease undone before
-- its reserve ran (RL_UNDO), or {0, charge index, used, requested, retry_in (-1: none)}.
local id, tokens = ARGV[1], ARGV[2]
if redis.call('ZSCORE', KEYS[#KEYS], id) then return {2} end  -- undone before it ran
local now = clock(ARGV[5])
if redis.call('ZCOUNT', KEYS[3], '-inf', now) > 0 then expire(now, tonumber(ARGV[6])) end
local n = tonumber(ARGV[7])
local charges, pending, k = {}, {}, 5
for i = 1, n do
  local b = 7 + (i - 1) * 5
  local c = {kind = ARGV[b + 1], field = ARGV[b + 2], scope = ARGV[b + 3],
             limit = tonumber(ARGV[b + 4]), window = tonumber(ARGV[b + 5])}
  if c.kind ~= 'concurrent' then c.key = KEYS[k]; k = k + 1 end
  c.need = (c.kind == 'tpm') and tokens or '1'
  charges[i] = c
end
for i, c in ipairs(charges) do
  local need = tonumber(c.need)
  local extra = pending[c.field] or 0
  if c.kind == 'concurrent' then
    local used = num(redis.call('HGET', KEYS[1], 'c\\31' .. c.scope)) + extra
    if used + 1 > c.limit then return {0, i, used, 1, '-1'} end
  else
    trim(c.key, c.field, now - c.window)
    local used = num(redis.call('HGET', KEYS[1], c.field .. ':u'))
    if used + extra + need > c.limit then
      local retry = -1
      if extra == 0 then retry = retry_in(c.key, used, need, c.limit, c.window, now) end
      return {0, i, used + extra, need, fmt(retry)}
    end
  end
  pending[c.field] = extra + need
end
local entries, slots = {}, {}
for i, c in ipairs(charges) do
  if c.kind == 'concurrent' then
    redis.call('HINCRBY', KEYS[1], 'c\\31' .. c.scope, 1)
    slots[#slots + 1] = c.scope
  else
    local m = 'r' .. c.need .. ':' .. id .. ':' .. i
    redis.call('ZADD', c.key, now, m)
    redis.call('HINCRBY', KEYS[1], c.field .. ':u', c.need)
    redis.call('HINCRBY', KEYS[1], c.field .. ':r', c.need)
    entries[#entries + 1] = {m = m, f = c.field, w = c.window, t = (c.kind == 'tpm') and 1 or 0}
  end
end
local expires = now + tonumber(ARGV[3])
local lease = {t = tokens, e = entries, s = slots, q = ARGV[4]}
if #entries == 0 then lease.e = cjson.null end
if #slots == 0 then lease.s = cjson.null end
redis.call('HSET', KEYS[2], id, cjson.encode(lease))
redis.call('ZADD', KEYS[3], expires, id)
return {1, fmt(now), fmt(expires)}
""")

_LEASE = """
local function lease_of(id)
  local raw = redis.call('HGET', KEYS[2], id)
  if not raw then return nil end
  local l = cjson.decode(raw)
  if l.e == cjson.null then l.e = {} end
  if l.s == cjson.null then l.s = {} end
  if redis.call('ZREM', KEYS[3], id) == 1 then free_slots(l) end
  redis.call('ZREM', KEYS[4], id)
  redis.call('HDEL', KEYS[2], id)
  return l
end
"""

RL_SETTLE = Script("rl_settle", _COMMON + _LEASE + """
-- ARGV: id, tokens, now. Keeps the admissions (a tpm one now counts `tokens`), frees the
-- slots; returns the tokens above the reservation. Unknown id: nothing, 0.
local l = lease_of(ARGV[1])
if not l then return 0 end
local now, tokens = clock(ARGV[3]), ARGV[2]
for i, e in ipairs(l.e) do
  local key = KEYS[4 + i]
  trim(key, e.f, now - e.w)
  local at = redis.call('ZSCORE', key, e.m)
  if at then  -- still in the window
    local _, amount = parse(e.m)
    redis.call('ZREM', key, e.m)
    dec(e.f .. ':r', amount)
    local now_amount = amount
    if e.t == 1 then
      now_amount = tokens
      local delta = tonumber(tokens) - tonumber(amount)
      if delta ~= 0 then redis.call('HINCRBY', KEYS[1], e.f .. ':u', delta) end
    end
    redis.call('ZADD', key, at, 's' .. now_amount .. string.sub(e.m, #amount + 2))
  end
end
return math.max(tonumber(tokens) - tonumber(l.t), 0)
""")

_GIVE_BACK = """
-- Drop lease `id`, giving back its admissions and slots (`key_of(i, entry)`: the log of its
-- i-th entry); 1 if it was open, else 0.
local function give_back(id, now, key_of)
  local l = lease_of(id)
  if not l then return 0 end
  for i, e in ipairs(l.e) do
    local key = key_of(i, e)
    trim(key, e.f, now - e.w)
    if redis.call('ZREM', key, e.m) == 1 then
      local state, amount = parse(e.m)
      dec(e.f .. ':u', amount)
      if state == 'r' then dec(e.f .. ':r', amount) end
    end
  end
  return 1
end
"""

RL_RELEASE = Script("rl_release", _COMMON + _LEASE + _GIVE_BACK + """
-- ARGV: id, now. Gives back the admissions and the slots. Unknown id: nothing.
give_back(ARGV[1], clock(ARGV[2]), function(i, e) return KEYS[4 + i] end)
return 1
""")

RL_UNDO = Script("rl_undo", _COMMON + _LEASE + _GIVE_BACK + """
-- KEYS: sums, leases, open, expired, the logs of `fields`, the tombstones (last).
-- ARGV: now, n, n fields, then (id, keep seconds) pairs: leases whose callers gave up
-- waiting (a hung server may still run their reserve). Each lease is given back if its
-- reserve ran, and a tombstone kept for `keep` s makes a reserve that runs later admit
-- nothing: whichever runs first, nothing stays held. Idempotent; returns the leases dropped.
local now, n = clock(ARGV[1]), tonumber(ARGV[2])
local tombs, logs = KEYS[#KEYS], {}
for j = 1, n do logs[ARGV[2 + j]] = KEYS[4 + j] end
redis.call('ZREMRANGEBYSCORE', tombs, '-inf', now)
local dropped = 0
for i = 3 + n, #ARGV, 2 do
  dropped = dropped + give_back(ARGV[i], now, function(_, e) return logs[e.f] end)
  redis.call('ZADD', tombs, now + tonumber(ARGV[i + 1]), ARGV[i])
end
return dropped
""")

RL_USAGE = Script("rl_usage", _COMMON + """
-- ARGV: now, expire batch, n, then per charge: kind, field, scope, limit, window.
-- Returns per charge: used, reserved, retry_in (-1: none).
local now = clock(ARGV[1])
expire(now, tonumber(ARGV[2]))
local out, k = {}, 5
for i = 1, tonumber(ARGV[3]) do
  local b = 3 + (i - 1) * 5
  local kind, field, scope = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local limit, window = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  if kind == 'concurrent' then
    local used = num(redis.call('HGET', KEYS[1], 'c\\31' .. scope))
    out[#out + 1] = used
    out[#out + 1] = used
    out[#out + 1] = (used < limit) and '0' or '-1'
  else
    trim(KEYS[k], field, now - window)
    local used = num(redis.call('HGET', KEYS[1], field .. ':u'))
    out[#out + 1] = used
    out[#out + 1] = num(redis.call('HGET', KEYS[1], field .. ':r'))
    if used < limit then out[#out + 1] = '0'
    else out[#out + 1] = fmt(retry_in(KEYS[k], used, 1, limit, window, now)) end
    k = k + 1
  end
end
return out
""")

RL_EXPIRE = Script("rl_expire", _COMMON + """
-- ARGV: now, batch, retention. Expires up to `batch` open leases (their slots come back) and
-- forgets expired ones older than now - retention, and tombstones past their time; returns
-- how many it expired.
local now = clock(ARGV[1])
local n = expire(now, tonumber(ARGV[2]))
forget_expired(KEYS[4], KEYS[2], now - tonumber(ARGV[3]), tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], '-inf', now)  -- tombstones past their time
return n
""")
