-- records: what Redis holds of each reservation id, in one atomic read.
-- KEYS: meta, res, settled
-- ARGV: reservation ids
-- Returns {} if the sale is unknown, else one record per id: 'state|qty|reserved_at_ms|user' for a
-- pending reservation, 'confirmed|qty|0|' or 'released|qty|0|' for a settled one (smallhash.lua keeps no
-- time or user), '' for an id Redis does not know.
--#include smallhash
local meta, res = KEYS[1], KEYS[2]
if redis.call('EXISTS', meta) == 0 then return {} end
local settled = smallhash_open(KEYS[3])
local out = {}
for i, id in ipairs(ARGV) do
  local rec = redis.call('HGET', res, id)
  if rec then
    out[i] = rec
  else
    local v = settled_get(settled, id)
    if v == nil then out[i] = ''
    elseif v > 0 then out[i] = 'confirmed|' .. v .. '|0|'
    else out[i] = 'released|' .. (-v) .. '|0|' end
  end
end
return out
