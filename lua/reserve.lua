-- reserve: one atomic step of a buy. Checks, in order: arguments, sale exists, rate limits (buyer and
-- client IP token buckets), idempotent replay, sale open, per-user limit, stock, admission by the
-- waiting room; then takes the stock
-- and records the pending reservation.
-- KEYS: meta, res, pending, holds, idem, bucket_buyer, room_config, settled[, bucket_ip] (no IP, no ninth
--       key: every key must share the sale's hash tag, so its Redis Cluster slot; the settled store's
--       buckets, read through KEYS[8], carry the same tag)
-- ARGV: reservation_id, user, quantity, idempotency_key ('' = none), admission_expires_ms ('' = none:
--       the expiry of the buyer's admission token, which the API verified; required while the sale's
--       waiting room is on, and checked against Redis's clock here), fresh ('1': the id is a UUID 4 the
--       engine just made, which no reservation can have had, so the settled store is not searched for it),
--       buckets (the sale's stock buckets as the caller routed the buyer with; '' = not checked)
-- Returns {code, reservation_id, state, number[, reserved_at_ms]}:
--   ok            {id, 'pending', remaining, reserved_at_ms}  (Redis time, as in the record and the
--                 pending set's score: the ledger row is stamped with the same clock)
--   replay        {existing id, its state, its quantity} (a settled one is found in the settled store)
--   idem_conflict {existing id, '', its quantity}
--   rate_limited  {'', 'buyer'|'ip', retry_after_ms}
--   closed / unknown_sale / not_admitted / admission_expired {'', '', 0}; sold_out {'', '', remaining};
--   limit {'', '', units held}
--   bad_args      {'', field, 0}
--   bad_buckets   {'', '', buckets}: the sale has another number of stock buckets than the caller routed by
--#include smallhash
local meta, res, pending, holds, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, user, qty_s, ikey = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local qty = tonumber(qty_s)
if id == nil or id == '' then return {'bad_args', '', 'reservation_id', 0} end
if user == nil or user == '' then return {'bad_args', '', 'user', 0} end
if qty == nil or qty ~= math.floor(qty) or qty < 1 then return {'bad_args', '', 'quantity', 0} end

local m = redis.call('HMGET', meta, 'remaining', 'open', 'limit',
  'buyer_rate', 'buyer_burst', 'ip_rate', 'ip_burst', 'buckets')
if m[1] == false then return {'unknown_sale', '', '', 0} end
if (ARGV[7] or '') ~= '' and ARGV[7] ~= (m[8] or '1') then return {'bad_buckets', '', '', tonumber(m[8]) or 1} end
local remaining = tonumber(m[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Token buckets: {tokens, ms}. Both are checked before either is spent.
local function bucket(key, rate, burst)
  rate, burst = tonumber(rate) or 0, tonumber(burst) or 0
  if rate <= 0 or burst <= 0 or key == '' then return nil end
  local b = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  return {key = key, tokens = tokens, rate = rate, burst = burst}
end
local buckets = {{'buyer', bucket(KEYS[6], m[4], m[5])}, {'ip', bucket(KEYS[9] or '', m[6], m[7])}}
for _, kb in ipairs(buckets) do
  local b = kb[2]
  if b and b.tokens < 1 then
    return {'rate_limited', '', kb[1], math.ceil((1 - b.tokens) * 1000 / b.rate)}
  end
end
for _, kb in ipairs(buckets) do
  local b = kb[2]
  if b then
    redis.call('HSET', b.key, 't', tostring(b.tokens - 1), 'ts', now)
    redis.call('PEXPIRE', b.key, math.ceil(b.burst / b.rate * 1000) + 1000)
  end
end

-- A replay answers after the buckets: a replay costs the API a ledger read, so it spends a token too.
if ikey ~= '' then
  local prev = redis.call('HGET', idem, user .. '\0' .. ikey)
  if prev then
    local rec = redis.call('HGET', res, prev)
    local state, pqty = string.match(rec or '', '^(%a+)|(%d+)|')
    if not rec then
      local v = settled_get(smallhash_open(KEYS[8]), prev)
      if v then state, pqty = (v > 0 and 'confirmed' or 'released'), math.abs(v) end
    end
    if tonumber(pqty) ~= qty then return {'idem_conflict', prev, '', tonumber(pqty) or 0} end
    return {'replay', prev, state, qty}
  end
end

if m[2] ~= '1' then return {'closed', '', '', 0} end
local held = tonumber(redis.call('HGET', holds, user) or '0')
if held + qty > tonumber(m[3]) then return {'limit', '', '', held} end
if remaining < qty then return {'sold_out', '', '', remaining} end
-- The waiting room: while it is on, only a buyer it admitted (a token the API verified, unexpired by
-- Redis's clock) takes stock. After the refusals that say more (closed, limit, sold out).
if KEYS[7] and redis.call('HGET', KEYS[7], 'on') == '1' then
  local admission = tonumber(ARGV[5] or '')
  if admission == nil then return {'not_admitted', '', '', 0} end
  if admission <= now then return {'admission_expired', '', '', 0} end
end
if redis.call('HEXISTS', res, id) == 1 or (ARGV[6] ~= '1' and settled_get(smallhash_open(KEYS[8]), id)) then
  return {'bad_args', '', 'reservation_id', 0}
end

redis.call('HINCRBY', meta, 'remaining', -qty)
redis.call('HINCRBY', meta, 'pending', qty)
redis.call('HINCRBY', holds, user, qty)
redis.call('HSET', res, id, 'pending|' .. qty .. '|' .. now .. '|' .. user)
redis.call('ZADD', pending, now, id)
if ikey ~= '' then redis.call('HSET', idem, user .. '\0' .. ikey, id) end
return {'ok', id, 'pending', remaining - qty, now}
