-- suspects: what one reconcile pass reads of a sale, in one atomic step: Redis's clock (the one reservations
-- are stamped with), the sale's counters (as snapshot.lua), how many pending reservations are younger than
-- the grace period (in flight), and a window of the older ones in the pending set's order (time, then id),
-- starting after a cursor entry. The cursor entry may have left the set meanwhile: the window then starts
-- where it would have been.
-- KEYS: meta, pending, res
-- ARGV: grace_ms, after_score ('' = from the oldest), after_id, limit
-- Returns {now_ms, young, {id, score, ...}, {field, value, ...}}; the last is {} when the sale is unknown.
local meta, pending, res = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[1])
local m = redis.call('HGETALL', meta)
if #m == 0 then return {now, 0, {}, m} end
m[#m + 1] = 'pending_count'
m[#m + 1] = redis.call('ZCARD', pending)
m[#m + 1] = 'reservations'
m[#m + 1] = redis.call('HLEN', res)
local young = redis.call('ZCOUNT', pending, '(' .. cutoff, '+inf')

local start = 0
if ARGV[2] ~= '' then
  local rank = redis.call('ZRANK', pending, ARGV[3])
  if rank then
    start = rank + 1
  else
    start = redis.call('ZCOUNT', pending, '-inf', '(' .. ARGV[2])
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', pending, ARGV[2], ARGV[2])) do
      if id <= ARGV[3] then start = start + 1 end
    end
  end
end
local window = {}
local got = redis.call('ZRANGE', pending, start, start + tonumber(ARGV[4]) - 1, 'WITHSCORES')
for i = 1, #got, 2 do
  if tonumber(got[i + 1]) > cutoff then break end
  window[#window + 1] = got[i]
  window[#window + 1] = got[i + 1]
end
return {now, young, window, m}
