-- seed: create a sale's counters, or restock an existing sale by the difference to the new total.
-- Never clobbers live counts: pending/confirmed stay, remaining moves by the delta only, and a total
-- below what is already sold is refused.
-- KEYS: meta
-- ARGV: total ('' = keep the bucket's total: configuration and gate only), per_user_limit, open ('1', '0', or '' to keep), buyer_rate, buyer_burst, ip_rate, ip_burst,
--       run_id (of this Redis run: a sale created now holds everything this run took for it), buckets
--       (the sale's stock buckets, written on every bucket at creation; '' or absent: one)
-- Returns {code, total, remaining, sold}: created | restocked | unchanged | below_sold | bad_args
local meta = KEYS[1]
local total, limit, open = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local keep = ARGV[1] == ''
if not keep and (total == nil or total < 0 or total ~= math.floor(total)) then return {'bad_args', 0, 0, 0} end
if limit == nil or limit < 1 or limit ~= math.floor(limit) then return {'bad_args', 0, 0, 0} end
local cfg = {'limit', limit, 'buyer_rate', ARGV[4], 'buyer_burst', ARGV[5], 'ip_rate', ARGV[6], 'ip_burst', ARGV[7]}

local cur = redis.call('HMGET', meta, 'total', 'remaining', 'pending', 'confirmed')
if cur[1] == false then
  if keep then return {'bad_args', 0, 0, 0} end
  redis.call('HSET', meta, 'total', total, 'remaining', total, 'pending', 0, 'confirmed', 0, 'released', 0,
    'open', open == '1' and '1' or '0', 'run', ARGV[8] or '', unpack(cfg))
  if (tonumber(ARGV[9] or '') or 1) > 1 then redis.call('HSET', meta, 'buckets', ARGV[9]) end
  return {'created', total, total, 0}
end
local ctotal, remaining = tonumber(cur[1]), tonumber(cur[2])
if keep then total = ctotal end
local sold = tonumber(cur[3]) + tonumber(cur[4])
local delta = total - ctotal
if remaining + delta < 0 then return {'below_sold', ctotal, remaining, sold} end
redis.call('HSET', meta, unpack(cfg))
if open ~= '' then redis.call('HSET', meta, 'open', open) end
if delta == 0 then return {'unchanged', ctotal, remaining, sold} end
redis.call('HINCRBY', meta, 'total', delta)
redis.call('HINCRBY', meta, 'remaining', delta)
return {'restocked', total, remaining + delta, sold}
