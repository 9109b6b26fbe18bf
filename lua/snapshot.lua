-- snapshot: every counter of a sale in one atomic read.
-- KEYS: meta, pending, res, settled
-- Returns {field, value, ...} of the meta hash plus pending_count and reservations (pending records
-- plus settled ones), or {} if unknown.
local m = redis.call('HGETALL', KEYS[1])
if #m == 0 then return m end
m[#m + 1] = 'pending_count'
m[#m + 1] = redis.call('ZCARD', KEYS[2])
m[#m + 1] = 'reservations'
m[#m + 1] = redis.call('HLEN', KEYS[3]) + (tonumber(redis.call('HGET', KEYS[4], 'count')) or 0)
return m
