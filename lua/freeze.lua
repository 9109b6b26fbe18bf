-- freeze: stops (ARGV[1] = Redis time in ms until which) or lets again ('') the giving of stock out of a
-- bucket (give.lua), so a restore or a restock reads the buckets' totals with no move starting meanwhile.
-- A bucket whose meta is gone is left alone (no meta is created here).
-- KEYS: meta
-- Returns 1 if the bucket exists, else 0.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], 'frozen') else redis.call('HSET', KEYS[1], 'frozen', ARGV[1]) end
return 1
