-- release: pending -> released for each reservation id, returning its stock, idempotently.
-- A confirmed reservation is never released; a released one is never released twice.
-- KEYS: meta, res, pending, holds
-- ARGV: reservation ids
-- Returns one code per id: released (stock returned now), already, confirmed (refused), unknown.
local meta, res, pending, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local out = {}
local units = 0
for i, id in ipairs(ARGV) do
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
end
if units > 0 then
  redis.call('HINCRBY', meta, 'pending', -units)
  redis.call('HINCRBY', meta, 'remaining', units)
  redis.call('HINCRBY', meta, 'released', units)
end
return out
