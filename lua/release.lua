-- release: pending -> released for each reservation id, returning its stock, idempotently.
-- A confirmed reservation is never released; a released one is never released twice.
-- KEYS: meta, res, pending, holds, settled
-- ARGV: reservation ids
-- Returns one code per id: released (stock returned now), already, confirmed (refused), unknown.
--#include smallhash
local meta, res, pending = KEYS[1], KEYS[2], KEYS[3]
local holds, settled = KEYS[4], smallhash_open(KEYS[5])
local out = {}
local units = 0
for i, id in ipairs(ARGV) do
  local rec = redis.call('HGET', res, id)
  if not rec then
    local v = settled_get(settled, id)
    if v == nil then out[i] = 'unknown' elseif v < 0 then out[i] = 'already' else out[i] = 'confirmed' end
  else
    local state, qty, user = string.match(rec, '^(%a+)|(%d+)|%d+|(.*)$')
    if state == 'pending' then
      local q = tonumber(qty)
      redis.call('HDEL', res, id)
      redis.call('ZREM', pending, id)
      settled_put(settled, id, -q)
      if redis.call('HINCRBY', holds, user, -q) <= 0 then redis.call('HDEL', holds, user) end
      units = units + q
      out[i] = 'released'
    elseif state == 'released' then
      out[i] = 'already'  -- a full record written before settled reservations were compacted
    else
      out[i] = 'confirmed'
    end
  end
end
smallhash_close(settled)
if units > 0 then
  redis.call('HINCRBY', meta, 'pending', -units)
  redis.call('HINCRBY', meta, 'remaining', units)
  redis.call('HINCRBY', meta, 'released', units)
end
return out
