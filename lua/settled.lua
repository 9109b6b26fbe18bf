-- settled: the compact store of settled reservations, included by the scripts that read or write it.
-- A pending reservation keeps its full record in the res hash (state|qty|reserved_at_ms|user: the
-- reconciler needs the time and release needs the user). Once settled, only what later steps need is
-- kept: id -> +qty (confirmed) or -qty (released), which answers idempotent replays and repeated
-- confirm/release; per-buyer holdings stay in the holds hash. The ledger keeps everything else.
-- Layout: linear hashing over small hashes, so each stays in Redis's compact listpack encoding at any
-- sale size: the directory hash <dir> holds 'buckets' (n) and 'count'; bucket i is the hash <dir>:<i>.
-- A bucket is split (about 64 entries moved, one bucket at a time) whenever the average passes 64.
-- Bucket keys share the sale's hash tag, so the script stays in the sale's Redis Cluster slot.
local SETTLED_PER_BUCKET = 64

local function settled_hash(id)
  return tonumber(string.sub(redis.sha1hex(id), 1, 8), 16)
end

-- The largest power of two <= n (n >= 1).
local function settled_level(n)
  local lo = 1
  while lo * 2 <= n do lo = lo * 2 end
  return lo
end

local function settled_bucket(dir, n, h)
  local lo = settled_level(n)
  local b = h % lo
  if b < n - lo then b = h % (2 * lo) end
  return dir .. ':' .. b
end

-- The signed quantity of a settled reservation (> 0 confirmed, < 0 released), or nil.
local function settled_get(dir, id)
  local n = tonumber(redis.call('HGET', dir, 'buckets'))
  if not n then return nil end
  return tonumber(redis.call('HGET', settled_bucket(dir, n, settled_hash(id)), id))
end

-- Records a reservation as settled (called once per reservation, on its move out of pending).
local function settled_put(dir, id, signed_qty)
  local m = redis.call('HMGET', dir, 'buckets', 'count')
  local n, count = tonumber(m[1]) or 1, (tonumber(m[2]) or 0) + 1
  redis.call('HSET', settled_bucket(dir, n, settled_hash(id)), id, signed_qty)
  if count > SETTLED_PER_BUCKET * n then
    -- Split bucket s = n - lo: the entries whose hash mod 2*lo is not s move to the new bucket n.
    local lo = settled_level(n)
    local s = n - lo
    local from = dir .. ':' .. s
    local flat = redis.call('HGETALL', from)
    local moved, fields = {}, {}
    for i = 1, #flat, 2 do
      if settled_hash(flat[i]) % (2 * lo) ~= s then
        moved[#moved + 1] = flat[i]
        moved[#moved + 1] = flat[i + 1]
        fields[#fields + 1] = flat[i]
      end
    end
    if #fields > 0 then
      redis.call('HSET', dir .. ':' .. n, unpack(moved))
      redis.call('HDEL', from, unpack(fields))
    end
    n = n + 1
  end
  redis.call('HSET', dir, 'buckets', n, 'count', count)
end

-- Deletes the whole store.
local function settled_drop(dir)
  local n = tonumber(redis.call('HGET', dir, 'buckets')) or 0
  for i = 0, n - 1 do redis.call('DEL', dir .. ':' .. i) end
  redis.call('DEL', dir)
end
