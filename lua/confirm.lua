-- confirm: pending -> confirmed for each reservation id, idempotently.
-- KEYS: meta, res, pending
-- ARGV: reservation ids
-- Returns one code per id: confirmed (moved now), already (confirmed before), released (can never be
-- confirmed), unknown (no such reservation in Redis).
local meta, res, pending = KEYS[1], KEYS[2], KEYS[3]
local out = {}
local moved = 0
for i, id in ipairs(ARGV) do
  local rec = redis.call('HGET', res, id)
  if not rec then
    out[i] = 'unknown'
  else
    local state, qty, rest = string.match(rec, '^(%a+)|(%d+)|(.*)$')
    if state == 'pending' then
      redis.call('HSET', res, id, 'confirmed|' .. qty .. '|' .. rest)
      redis.call('ZREM', pending, id)
      moved = moved + tonumber(qty)
      out[i] = 'confirmed'
    elseif state == 'confirmed' then
      out[i] = 'already'
    else
      out[i] = 'released'
    end
  end
end
if moved > 0 then
  redis.call('HINCRBY', meta, 'pending', -moved)
  redis.call('HINCRBY', meta, 'confirmed', moved)
end
return out
