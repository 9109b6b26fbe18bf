-- release: pending -> released for each reservation id, returning its stock, idempotently.
-- A confirmed reservation is never released; a released one is never released twice.
-- KEYS: meta, res, pending, holds[, idem]
-- ARGV: reservation ids; with KEYS[5] (the idempotency hash) the ids are followed by one idempotency
--       field per id ('' for none), each deleted in the same step while it still names its reservation,
--       so a retry with that key reserves afresh (the API's answer to a failed ledger write).
-- Returns one code per id: released (stock returned now), already, confirmed (refused), unknown.
local meta, res, pending, holds, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local n = #ARGV
if idem then n = #ARGV / 2 end
local out = {}
local units = 0
for i = 1, n do
  local id = ARGV[i]
  local rec = redis.call('HGET', res, id)
  if not rec then
    out[i] = 'unknown'
  else
    local state, qty, ts, user = string.match(rec, '^(%a+)|(%d+)|(%d+)|(.*)$')
    if state == 'pending' then
      local q = tonumber(qty)
      redis.call('HSET', res, id, 'released|' .. qty .. '|' .. ts .. '|' .. user)
      redis.call('ZREM', pending, id)
      if redis.call('HINCRBY', holds, user, -q) <= 0 then redis.call('HDEL', holds, user) end
      units = units + q
      out[i] = 'released'
    elseif state == 'released' then
      out[i] = 'already'
    else
      out[i] = 'confirmed'
    end
  end
  if idem then
    local field = ARGV[n + i]
    if field ~= '' and out[i] ~= 'confirmed' and redis.call('HGET', idem, field) == id then
      redis.call('HDEL', idem, field)
    end
  end
end
if units > 0 then
  redis.call('HINCRBY', meta, 'pending', -units)
  redis.call('HINCRBY', meta, 'remaining', units)
  redis.call('HINCRBY', meta, 'released', units)
end
return out
