-- rebuild: recreate a sale's counters and reservations from the ledger after Redis lost them.
-- Atomic and only when the sale is gone: if meta exists (the sale was seeded or rebuilt meanwhile), nothing
-- is written. Idempotency keys and rate-limit buckets are not in the ledger and are not rebuilt.
-- KEYS: meta, res, pending, holds, settled
-- ARGV: total, per_user_limit, open ('1'|'0'), buyer_rate, buyer_burst, ip_rate, ip_burst,
--       then five values per ledger row: reservation_id, state (pending|confirmed|released), quantity,
--       reserved_at_ms, user
-- Returns {code, total, remaining, pending, confirmed}: rebuilt | exists | below_sold | bad_args
-- Pending rows get their full record; settled rows go to the compact store of smallhash.lua.
--#include smallhash
local meta, res, pending, holds, settled = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local total, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if total == nil or total < 0 or limit == nil or limit < 1 then return {'bad_args', 0, 0, 0, 0} end
if redis.call('EXISTS', meta) == 1 then return {'exists', 0, 0, 0, 0} end
if (#ARGV - 7) % 5 ~= 0 then return {'bad_args', 0, 0, 0, 0} end

local npending, nconfirmed, nreleased = 0, 0, 0
for i = 8, #ARGV, 5 do
  local q = tonumber(ARGV[i + 2])
  local state = ARGV[i + 1]
  if state == 'pending' then npending = npending + q
  elseif state == 'confirmed' then nconfirmed = nconfirmed + q
  elseif state == 'released' then nreleased = nreleased + q
  else return {'bad_args', 0, 0, 0, 0} end
end
local remaining = total - npending - nconfirmed
if remaining < 0 then return {'below_sold', total, remaining, npending, nconfirmed} end

redis.call('DEL', res, pending, holds)
smallhash_drop(settled)
local settled_s = smallhash_open(settled)
for i = 8, #ARGV, 5 do
  local id, state, qty, ts, user = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if state == 'pending' then
    redis.call('HSET', res, id, state .. '|' .. qty .. '|' .. ts .. '|' .. user)
    redis.call('ZADD', pending, tonumber(ts), id)
  else
    settled_put(settled_s, id, state == 'confirmed' and tonumber(qty) or -tonumber(qty))
  end
  if state ~= 'released' then redis.call('HINCRBY', holds, user, tonumber(qty)) end
end
smallhash_close(settled_s)
redis.call('HSET', meta, 'total', total, 'remaining', remaining, 'pending', npending, 'confirmed', nconfirmed,
  'released', nreleased, 'open', ARGV[3] == '1' and '1' or '0', 'limit', limit,
  'buyer_rate', ARGV[4], 'buyer_burst', ARGV[5], 'ip_rate', ARGV[6], 'ip_burst', ARGV[7])
return {'rebuilt', total, remaining, npending, nconfirmed}
