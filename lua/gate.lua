-- gate: open ('1') or close ('0') a sale for new reservations.
-- KEYS: meta
-- ARGV: '1' | '0'
-- Returns the previous value, or 'unknown_sale'.
local prev = redis.call('HGET', KEYS[1], 'open')
if not prev then return 'unknown_sale' end
redis.call('HSET', KEYS[1], 'open', ARGV[1])
return prev
