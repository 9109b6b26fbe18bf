-- import: benchmark and test data only: settled reservations written straight into a seeded sale, into the
-- compact settled store (smallhash.lua) as the settling scripts leave them, with the counters and holdings
-- they imply. Atomic per call; an id the store already holds is skipped, so a repeated call counts nothing
-- twice. Not for a sale that is taking reservations (a pending record of the same id is not looked at).
-- KEYS: meta, holds, settled
-- ARGV: three values per reservation: id, signed quantity (+qty confirmed, -qty released), user
-- Returns the number of reservations written.
--#include smallhash
local meta, holds = KEYS[1], KEYS[2]
local settled = smallhash_open(KEYS[3])
local confirmed, released, n = 0, 0, 0
for i = 1, #ARGV, 3 do
  local id, q, user = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if settled_get(settled, id) == nil then
    settled_put(settled, id, q)
    if q > 0 then
      confirmed = confirmed + q
      redis.call('HINCRBY', holds, user, q)
    else
      released = released - q
    end
    n = n + 1
  end
end
smallhash_close(settled)
if confirmed > 0 then
  redis.call('HINCRBY', meta, 'remaining', -confirmed)
  redis.call('HINCRBY', meta, 'confirmed', confirmed)
end
if released > 0 then redis.call('HINCRBY', meta, 'released', released) end
return n
