-- expire: a hold the ledger expired gives its units back to the sale, idempotently. Redis holds a held
-- reservation as confirmed (or still pending, when its settler had not told Redis yet): either becomes
-- released, the units go back to remaining and the buyer's holding shrinks. Only the ledger decides that a
-- hold expired (a paid one never is), so this script is called only for rows the ledger moved to expired.
-- KEYS: meta, res, pending, holds
-- ARGV: reservation ids
-- Returns one code per id: released (units returned now), already (released before), unknown.
local meta, res, pending, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local out = {}
local from_confirmed, from_pending = 0, 0
for i, id in ipairs(ARGV) do
  local rec = redis.call('HGET', res, id)
  if not rec then
    out[i] = 'unknown'
  else
    local state, qty, ts, user = string.match(rec, '^(%a+)|(%d+)|(%d+)|(.*)$')
    if state == 'released' then
      out[i] = 'already'
    else
      local q = tonumber(qty)
      redis.call('HSET', res, id, 'released|' .. qty .. '|' .. ts .. '|' .. user)
      if state == 'pending' then
        redis.call('ZREM', pending, id)
        from_pending = from_pending + q
      else
        from_confirmed = from_confirmed + q
      end
      if redis.call('HINCRBY', holds, user, -q) <= 0 then redis.call('HDEL', holds, user) end
      out[i] = 'released'
    end
  end
end
local units = from_confirmed + from_pending
if units > 0 then
  if from_confirmed > 0 then redis.call('HINCRBY', meta, 'confirmed', -from_confirmed) end
  if from_pending > 0 then redis.call('HINCRBY', meta, 'pending', -from_pending) end
  redis.call('HINCRBY', meta, 'remaining', units)
  redis.call('HINCRBY', meta, 'released', units)
end
return out
