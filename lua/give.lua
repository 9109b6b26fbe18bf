-- give: the first step of moving stock between two buckets of one sale (see "Stock buckets" in
-- docs/architecture.md): takes up to `want` unsold units out of this bucket (its total and remaining both
-- fall, so total = remaining + pending + confirmed still holds here) and records the move in the bucket's
-- outbox until the receiver has counted it (take.lua) and the mover acknowledged it. A restore freezes the
-- bucket (meta field `frozen`: Redis time in ms until which nothing is given) to read a still picture.
-- KEYS: meta, moves_out
-- ARGV: move_id, want, to (the receiving bucket's index)
-- Returns the units given: 0 (none left, or unknown sale) or -1 (frozen by a restore).
local m = redis.call('HMGET', KEYS[1], 'remaining', 'frozen')
if m[1] == false then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if m[2] and tonumber(m[2]) and tonumber(m[2]) > now then return -1 end
local want = tonumber(ARGV[2])
if want == nil or want < 1 or want ~= math.floor(want) then return 0 end
local n = math.min(want, tonumber(m[1]))
if n <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'remaining', -n)
redis.call('HINCRBY', KEYS[1], 'total', -n)
redis.call('HINCRBY', KEYS[1], 'moved_out', n)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. '|' .. n)
return n
