-- confirm: pending -> confirmed for each reservation id, idempotently.
-- KEYS: meta, res, pending, settled
-- ARGV: reservation ids
-- Returns one code per id: confirmed (moved now), already (confirmed before), released (can never be
-- confirmed), unknown (no such reservation in Redis).
--#include smallhash
local meta, res, pending = KEYS[1], KEYS[2], KEYS[3]
local settled = smallhash_open(KEYS[4])
local out = {}
local moved = 0
for i, id in ipairs(ARGV) do
  local rec = redis.call('HGET', res, id)
  if not rec then
    local v = settled_get(settled, id)
    if v == nil then out[i] = 'unknown' elseif v > 0 then out[i] = 'already' else out[i] = 'released' end
  else
    local state, qty = string.match(rec, '^(%a+)|(%d+)|')
    if state == 'pending' then
      redis.call('HDEL', res, id)
      redis.call('ZREM', pending, id)
      settled_put(settled, id, qty)
      moved = moved + tonumber(qty)
      out[i] = 'confirmed'
    elseif state == 'confirmed' then
      out[i] = 'already'  -- a full record written before settled reservations were compacted
    else
      out[i] = 'released'
    end
  end
end
smallhash_close(settled)
if moved > 0 then
  redis.call('HINCRBY', meta, 'pending', -moved)
  redis.call('HINCRBY', meta, 'confirmed', moved)
end
return out
