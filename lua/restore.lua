-- restore: make a sale's counters and reservations agree with the ledger after Redis lost some or all of
-- them (a restart without persistence, a restart that lost an AOF tail, a failover), in one atomic step.
-- The caller holds the sale's restore lock (SET NX with a token) while it reads the ledger and runs this:
-- one restore at a time per sale, and a restore whose lock expired or was taken over writes nothing.
-- Counters are set absolutely from the merged records, never incremented, so a second restore recounts
-- and never counts twice.
--
-- Merge: every ledger row is recorded; a ledger row still pending takes Redis's state if Redis already
-- holds it final (the worker moved the ledger after the caller read it, then Redis); a final state in Redis
-- is kept (a disagreement is the reconciler's to report, not this script's to guess); a Redis reservation
-- the ledger does not hold (its ledger write is still in flight) is kept as it is. When the sale's meta
-- exists its total, gate and limits are kept; otherwise they come from ARGV (the ledger's sale row).
-- Idempotency keys and rate-limit buckets are not in the ledger and are not restored.
-- Written compact, as the settling scripts leave them: pending reservations get their full record (and the
-- pending set), settled ones an entry in the settled store (smallhash.lua: id -> +qty / -qty), which keeps
-- the entries it already has; a full settled record an older version left in the records hash moves there.
-- The per-buyer holdings are recounted from the merged records; a settled entry keeps no buyer, so the
-- ledger's row names it (a confirmed entry the ledger does not hold cannot exist: confirming follows it).
-- KEYS: meta, res, pending, holds, lock, settled
-- ARGV: token, run_id ('' = unknown), total, per_user_limit, open ('1'|'0'), buyer_rate, buyer_burst,
--       ip_rate, ip_burst, buckets (the sale's stock buckets, written with the config), then five values per
--       ledger row: reservation_id, state (pending|confirmed|
--       released), quantity, reserved_at_ms, user
-- Returns {code, total, remaining, pending, confirmed}:
--   restored | current (already restored on this Redis run) | lost_lock | below_sold | bad_args
-- The lock is released on restored and current; on a refusal it stays for the caller to release.
--#include smallhash
local meta, res, pending, holds, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run = ARGV[2]
if redis.call('GET', lock) ~= ARGV[1] then return {'lost_lock', 0, 0, 0, 0} end
local total, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
if total == nil or total < 0 or limit == nil or limit < 1 or (#ARGV - 10) % 5 ~= 0 then
  return {'bad_args', 0, 0, 0, 0}
end
local m = redis.call('HMGET', meta, 'total', 'run')
if run ~= '' and m[2] == run then
  redis.call('DEL', lock)
  return {'current', tonumber(m[1]) or 0, 0, 0, 0}
end
local exists = m[1] ~= false
if exists then total = tonumber(m[1]) end

local settled = smallhash_open(KEYS[6])
local stored = {} -- id -> signed quantity, every entry of the settled store
for b = 0, settled.n - 1 do
  local flat = redis.call('HGETALL', settled.dir .. ':' .. b)
  for i = 1, #flat, 2 do stored[flat[i]] = tonumber(flat[i + 1]) end
end

local recs = {} -- id -> {state, qty, ts, user} of every reservation outside the settled store
local ids = {}
local cur = redis.call('HGETALL', res)
for i = 1, #cur, 2 do
  local state, qty, ts, user = string.match(cur[i + 1], '^(%a+)|(%d+)|(%d+)|(.*)$')
  if state and stored[cur[i]] == nil then
    recs[cur[i]] = {state, qty, ts, user}
    ids[#ids + 1] = cur[i]
  end
end
local users = {} -- id -> buyer, for the settled entries the ledger names
for i = 11, #ARGV, 5 do
  local id, state, qty = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if (state ~= 'pending' and state ~= 'confirmed' and state ~= 'released') or qty == nil or qty < 1 then
    return {'bad_args', 0, 0, 0, 0}
  end
  if stored[id] ~= nil then
    users[id] = ARGV[i + 4]  -- final in Redis: kept
  else
    local have = recs[id]
    if have == nil then ids[#ids + 1] = id end
    if have == nil or (have[1] == 'pending' and state ~= 'pending') then
      recs[id] = {state, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]}
    end
  end
end

local np, nc, nr = 0, 0, 0
local held = {}
for _, id in ipairs(ids) do
  local r = recs[id]
  local q = tonumber(r[2])
  if r[1] == 'pending' then np = np + q elseif r[1] == 'confirmed' then nc = nc + q else nr = nr + q end
  if r[1] ~= 'released' then held[r[4]] = (held[r[4]] or 0) + q end
end
for id, v in pairs(stored) do
  if v > 0 then
    nc = nc + v
    if users[id] then held[users[id]] = (held[users[id]] or 0) + v end
  else
    nr = nr - v
  end
end
local remaining = total - np - nc
if remaining < 0 then
  return {'below_sold', total, remaining, np, nc}
end

redis.call('DEL', res, pending, holds)
for _, id in ipairs(ids) do
  local r = recs[id]
  if r[1] == 'pending' then
    redis.call('HSET', res, id, r[1] .. '|' .. r[2] .. '|' .. r[3] .. '|' .. r[4])
    redis.call('ZADD', pending, tonumber(r[3]), id)
  else
    settled_put(settled, id, r[1] == 'confirmed' and tonumber(r[2]) or -tonumber(r[2]))
  end
end
smallhash_close(settled)
for user, q in pairs(held) do redis.call('HSET', holds, user, q) end
if exists then
  redis.call('HSET', meta, 'remaining', remaining, 'pending', np, 'confirmed', nc, 'released', nr, 'run', run)
else
  redis.call('HSET', meta, 'total', total, 'remaining', remaining, 'pending', np, 'confirmed', nc,
    'released', nr, 'open', ARGV[5] == '1' and '1' or '0', 'limit', limit, 'buyer_rate', ARGV[6],
    'buyer_burst', ARGV[7], 'ip_rate', ARGV[8], 'ip_burst', ARGV[9], 'run', run)
  if (tonumber(ARGV[10]) or 1) > 1 then redis.call('HSET', meta, 'buckets', ARGV[10]) end
end
redis.call('DEL', lock)
return {'restored', total, remaining, np, nc}
