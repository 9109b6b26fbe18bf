-- take: the second step of a move between buckets: counts the units give.lua took out of another bucket
-- into this one (total and remaining both rise), once per move id (the inbox remembers it until the
-- giver's outbox forgets the move).
-- KEYS: meta, moves_in
-- ARGV: move_id, units
-- Returns 'taken', 'already' (counted before), or 'lost' (this bucket's meta is gone: a restore counts the
-- move's units when it rebuilds the bucket).
if redis.call('EXISTS', KEYS[1]) == 0 then return 'lost' end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'already' end
local n = tonumber(ARGV[2])
if n == nil or n < 1 or n ~= math.floor(n) then return redis.error_reply('bad units') end
redis.call('HINCRBY', KEYS[1], 'remaining', n)
redis.call('HINCRBY', KEYS[1], 'total', n)
redis.call('HINCRBY', KEYS[1], 'moved_in', n)
redis.call('HSET', KEYS[2], ARGV[1], n)
return 'taken'
