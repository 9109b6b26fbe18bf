-- smallhash: one logical hash kept as many small hashes, included by the scripts that use one.
-- Redis stores a hash of up to 128 short fields as a listpack, a few bytes per field, and a larger one as a
-- hash table, ~70-130 bytes per field. A sale's per-reservation and per-buyer maps grow to millions of
-- fields, so each is spread over buckets by linear hashing: the directory hash <dir> holds 'buckets' (n)
-- and 'count' (fields); bucket i is the hash <dir>:<i>. When the average passes SMALLHASH_PER_BUCKET, one
-- bucket is split (its fields rehashed into itself and one new bucket), so every bucket stays small at any
-- size and no step ever moves more than one bucket. Bucket keys share the sale's hash tag: the scripts stay
-- in the sale's Redis Cluster slot.
-- Two stores use it: the settled reservations (settled_*: id -> +qty confirmed / -qty released; a canonical
-- UUID id is packed to 17 bytes) and the per-buyer holdings (user -> units held, absent when 0).
local SMALLHASH_PER_BUCKET = 64

local function smallhash_level(n)  -- the largest power of two <= n (n >= 1)
  local lo = 1
  while lo * 2 <= n do lo = lo * 2 end
  return lo
end

local function smallhash_bucket(dir, n, field)
  local h = tonumber(string.sub(redis.sha1hex(field), 1, 8), 16)
  local lo = smallhash_level(n)
  local b = h % lo
  if b < n - lo then b = h % (2 * lo) end
  return dir .. ':' .. b
end

local function smallhash_dir(dir)  -- n, count
  local m = redis.call('HMGET', dir, 'buckets', 'count')
  return tonumber(m[1]) or 1, tonumber(m[2]) or 0
end

local function smallhash_get(dir, field)
  local n = tonumber(redis.call('HGET', dir, 'buckets'))
  if not n then return nil end
  return redis.call('HGET', smallhash_bucket(dir, n, field), field)
end

-- Records a new field count; splits bucket s = n - lo into s and n when the average passes the bound.
local function smallhash_count(dir, n, count)
  if count > SMALLHASH_PER_BUCKET * n then
    local lo = smallhash_level(n)
    local s = n - lo
    local from = dir .. ':' .. s
    local flat = redis.call('HGETALL', from)
    local moved, fields = {}, {}
    for i = 1, #flat, 2 do
      if tonumber(string.sub(redis.sha1hex(flat[i]), 1, 8), 16) % (2 * lo) ~= s then
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

-- Sets a field the caller knows is absent.
local function smallhash_add(dir, field, value)
  local n, count = smallhash_dir(dir)
  redis.call('HSET', smallhash_bucket(dir, n, field), field, value)
  smallhash_count(dir, n, count + 1)
end

-- Adds delta to an integer field; a field that falls to 0 or below is removed. Returns the new value.
local function smallhash_incr(dir, field, delta)
  local n, count = smallhash_dir(dir)
  local bucket = smallhash_bucket(dir, n, field)
  local v = redis.call('HINCRBY', bucket, field, delta)
  local before = v - delta
  if v <= 0 then
    redis.call('HDEL', bucket, field)
    if before > 0 then smallhash_count(dir, n, count - 1) end
  elseif before <= 0 then
    smallhash_count(dir, n, count + 1)
  end
  return v
end

local function smallhash_drop(dir)
  local n = tonumber(redis.call('HGET', dir, 'buckets')) or 0
  for i = 0, n - 1 do redis.call('DEL', dir .. ':' .. i) end
  redis.call('DEL', dir)
end

-- The settled store's field for a reservation id: a canonical (lowercase) UUID packed to NUL + 16 bytes,
-- any other id as itself; nil for an id that starts with NUL (reserve.lua refuses those, so none is held).
local function settled_field(id)
  if string.byte(id, 1) == 0 then return nil end
  if #id == 36 and string.match(id, '^[0-9a-f]+%-[0-9a-f]+%-[0-9a-f]+%-[0-9a-f]+%-[0-9a-f]+$')
      and string.sub(id, 9, 9) == '-' and string.sub(id, 14, 14) == '-' and string.sub(id, 19, 19) == '-'
      and string.sub(id, 24, 24) == '-' then
    return '\0' .. string.gsub(string.gsub(id, '-', ''), '%x%x', function(h) return string.char(tonumber(h, 16)) end)
  end
  return id
end

-- The signed quantity of a settled reservation (> 0 confirmed, < 0 released), or nil.
local function settled_get(dir, id)
  local field = settled_field(id)
  if not field then return nil end
  return tonumber(smallhash_get(dir, field))
end

local function settled_put(dir, id, signed_qty)
  smallhash_add(dir, settled_field(id), signed_qty)
end
