-- smallhash: one logical hash kept as many small hashes, included by the scripts that use one.
-- Redis stores a hash of up to 128 short fields as a listpack, a few bytes per field, and a larger one as a
-- hash table, ~70-130 bytes per field. A sale's map of settled reservations grows to millions of
-- fields, so it is spread over buckets by linear hashing: the directory hash <dir> holds 'buckets' (n)
-- and 'count' (fields); bucket i is the hash <dir>:<i>. When the average passes SMALLHASH_PER_BUCKET, the
-- bucket at the split pointer is split (its fields rehashed into itself and one new bucket), so no step
-- moves more than one bucket. Buckets not yet split in a round hold up to twice the average, so an average
-- of 32 keeps every bucket far below Redis's 128-field listpack bound at any size.
-- A script opens a store once (one read of the directory), works on it, and closes it (one write, only if
-- the count changed). Bucket keys share the sale's hash tag: the scripts stay in the sale's Cluster slot.
-- The settled reservations use it (settled_*: id -> +qty confirmed / -qty released). The per-buyer
-- holdings stay one plain hash: they grow with buyers, not reservations, and are on the reserve path.
local SMALLHASH_PER_BUCKET = 32

local function smallhash_level(n)  -- the largest power of two <= n (n >= 1)
  local lo = 1
  while lo * 2 <= n do lo = lo * 2 end
  return lo
end

-- A field's 32-bit hash: a UUID's first eight hex digits are already random (a reservation id is a
-- UUID 4) and cost one conversion; any other field is hashed with SHA-1.
local function smallhash_hash(field)
  if #field == 36 and string.byte(field, 9) == 45 then
    local h = tonumber(string.sub(field, 1, 8), 16)
    if h then return h end
  end
  return tonumber(string.sub(redis.sha1hex(field), 1, 8), 16)
end

local function smallhash_open(dir)
  local m = redis.call('HMGET', dir, 'buckets', 'count')
  local n = tonumber(m[1]) or 1
  return {dir = dir, n = n, lo = smallhash_level(n), count = tonumber(m[2]) or 0, dirty = false}
end

local function smallhash_bucket(s, field)
  local h = smallhash_hash(field)
  local b = h % s.lo
  if b < s.n - s.lo then b = h % (2 * s.lo) end
  return s.dir .. ':' .. b
end

-- The field's value, false if absent.
local function smallhash_get(s, field)
  return redis.call('HGET', smallhash_bucket(s, field), field)
end

-- Records a change of the field count; splits the bucket at the pointer when the average passes the bound.
local function smallhash_counted(s, delta)
  s.count = s.count + delta
  s.dirty = true
  if s.count > SMALLHASH_PER_BUCKET * s.n then
    local lo, split = s.lo, s.n - s.lo
    local from = s.dir .. ':' .. split
    local flat = redis.call('HGETALL', from)
    local moved, fields = {}, {}
    for i = 1, #flat, 2 do
      if smallhash_hash(flat[i]) % (2 * lo) ~= split then
        moved[#moved + 1] = flat[i]
        moved[#moved + 1] = flat[i + 1]
        fields[#fields + 1] = flat[i]
      end
    end
    if #fields > 0 then
      redis.call('HSET', s.dir .. ':' .. s.n, unpack(moved))
      redis.call('HDEL', from, unpack(fields))
    end
    s.n = s.n + 1
    s.lo = smallhash_level(s.n)
  end
end

local function smallhash_close(s)
  if s.dirty then redis.call('HSET', s.dir, 'buckets', s.n, 'count', s.count) end
end

-- Sets a field the caller knows is absent.
local function smallhash_add(s, field, value)
  redis.call('HSET', smallhash_bucket(s, field), field, value)
  smallhash_counted(s, 1)
end

local function smallhash_drop(dir)
  local n = tonumber(redis.call('HGET', dir, 'buckets')) or 0
  for i = 0, n - 1 do redis.call('DEL', dir .. ':' .. i) end
  redis.call('DEL', dir)
end

-- The signed quantity of a settled reservation (> 0 confirmed, < 0 released), or nil.
local function settled_get(s, id)
  local v = smallhash_get(s, id)
  return tonumber(v)
end

local function settled_put(s, id, signed_qty)
  smallhash_add(s, id, signed_qty)
end

-- Changes the signed quantity of a settled reservation the caller found present (the count is unchanged).
local function settled_set(s, id, signed_qty)
  redis.call('HSET', smallhash_bucket(s, id), id, signed_qty)
end
