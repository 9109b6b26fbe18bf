-- expire: a hold the ledger expired gives its units back to the sale, idempotently. Redis holds a held
-- reservation as confirmed (a compact settled entry, or a full record written before settled reservations
-- were compacted) or still pending, when its settler had not told Redis yet: any of them becomes a released
-- settled entry, the units go back to remaining and the buyer's holding shrinks. A compact entry keeps no
-- buyer, so the caller passes each reservation's buyer from its ledger row. Only the ledger decides that a
-- hold expired (a paid one never is), so this script is called only for rows the ledger moved to expired.
-- KEYS: meta, res, pending, holds, settled
-- ARGV: reservation id, buyer, reservation id, buyer, ...
-- Returns one code per id: released (units returned now), already (released before), unknown.
--#include smallhash
local meta, res, pending, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- Checked before any write, so a bad call changes nothing.
if #ARGV % 2 ~= 0 then return redis.error_reply('expire: ARGV must be id, buyer pairs') end
for i = 2, #ARGV, 2 do
  if ARGV[i] == '' then return redis.error_reply('expire: empty buyer for ' .. ARGV[i - 1]) end
end
local settled = smallhash_open(KEYS[5])
local out = {}
local from_confirmed, from_pending = 0, 0
for i = 1, #ARGV / 2 do
  local id, buyer = ARGV[2 * i - 1], ARGV[2 * i]
  local rec = redis.call('HGET', res, id)
  local q, user = nil, buyer
  if not rec then
    local v = settled_get(settled, id)
    if v == nil then
      out[i] = 'unknown'
    elseif v < 0 then
      out[i] = 'already'
    else
      q = v
      settled_set(settled, id, -v)
      from_confirmed = from_confirmed + v
    end
  else
    local state, qty, rec_user = string.match(rec, '^(%a+)|(%d+)|%d+|(.*)$')
    if state == 'released' then
      out[i] = 'already'
    else
      q, user = tonumber(qty), rec_user
      redis.call('HDEL', res, id)
      settled_put(settled, id, -q)
      if state == 'pending' then
        redis.call('ZREM', pending, id)
        from_pending = from_pending + q
      else
        from_confirmed = from_confirmed + q
      end
    end
  end
  if q then
    if redis.call('HINCRBY', holds, user, -q) <= 0 then redis.call('HDEL', holds, user) end
    out[i] = 'released'
  end
end
smallhash_close(settled)
local units = from_confirmed + from_pending
if units > 0 then
  if from_confirmed > 0 then redis.call('HINCRBY', meta, 'confirmed', -from_confirmed) end
  if from_pending > 0 then redis.call('HINCRBY', meta, 'pending', -from_pending) end
  redis.call('HINCRBY', meta, 'remaining', units)
  redis.call('HINCRBY', meta, 'released', units)
end
return out
