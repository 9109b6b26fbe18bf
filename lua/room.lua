-- room: a sale's waiting room, one atomic step per operation (ARGV[1]): configure | join | poll | status.
--
-- Order. Buyers who join in the openQueueSeconds before the start get a score drawn uniformly from
-- [0, 2^52) by the caller (a CSPRNG, ARGV) and kept hidden until the start; buyers who join later get
-- 2^52 + their arrival number. The queue (a sorted set) is thus, at every instant, the early buyers in a
-- uniformly random order followed by the late ones in arrival order, and a position is a ZRANK: nothing
-- has to be shuffled at the start, so no O(n) step blocks Redis when the crowd is largest.
--
-- Admission. A cursor counts the positions admitted: from the start it moves at `rate` per second of
-- Redis time and never beyond the queue's length (an empty room banks no credit for a later burst).
-- The queue only grows, and only in `join`, which first moves the cursor under the old length, so the
-- cursor is a function of the arrivals and the clock alone: how often anyone polls changes nothing.
-- Position p (0-based) is admitted when p < cursor; its first answer as admitted stamps admitted_ms.
--
-- KEYS: cfg, queue, buyers, tickets, admitted, polls, clock, meta (the sale's counters, read only)
-- configure ARGV: on ('1'|'0'), open_ms, start_ms, end_ms (0: none), rate (per second)
--   -> {'configured'}
-- join ARGV: buyer, ticket, entropy (integer in [0, 2^52)), token_ttl_ms, min_interval_ms
--   -> {'new'|'existing', view...} | {'off'} | {'not_open', ms until open} | {'closed'} | {'sold_out'}
--      | {'too_soon', ms to wait} (the buyer's ticket was joined or polled less than min_interval_ms ago)
-- poll ARGV: buyer, ticket, min_interval_ms, token_ttl_ms
--   -> {'ok', view...} | {'off'} | {'unknown_ticket'} | {'sold_out'} | {'too_soon', ms to wait}
-- status ARGV: (none) -> {on, tickets, early, admitted (cursor), served, rate, start_ms} | {} when no room
-- view: ticket, status (waiting_for_start|queued|admitted|expired), rank (-1 before the start), ahead,
--       wait_ms, admitted_ms (0: not yet), tickets, early
local cfg_key, queue, buyers, tickets, admitted, polls, clock, meta =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local op = ARGV[1]
local LATE = 4503599627370496 -- 2^52: every early score is below it
local EPS = 1e-9 -- the cursor is a sum of float steps: a whole number must not floor to one below it

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function config()
  local c = redis.call('HMGET', cfg_key, 'on', 'open_ms', 'start_ms', 'end_ms', 'rate')
  if c[1] == false then return nil end
  return {on = c[1] == '1', open_ms = tonumber(c[2]), start_ms = tonumber(c[3]), end_ms = tonumber(c[4]),
          rate = tonumber(c[5])}
end

-- The cursor at `now` under config `c`; stored only when `store` (a read must not write).
local function cursor_at(c, store)
  local k = redis.call('HMGET', clock, 'cursor', 'ts')
  local cursor = tonumber(k[1]) or 0
  local ts = tonumber(k[2]) or c.start_ms
  if ts < c.start_ms then ts = c.start_ms end
  if now <= ts then return cursor end
  local n = redis.call('ZCARD', queue)
  cursor = math.min(n, cursor + (now - ts) * c.rate / 1000)
  if store then redis.call('HSET', clock, 'cursor', string.format('%.17g', cursor), 'ts', now) end
  return cursor
end

local function view(c, ticket, cursor, ttl_ms)
  local n = redis.call('ZCARD', queue)
  local early = tonumber(redis.call('HGET', clock, 'early') or '0')
  if now < c.start_ms then
    return {ticket, 'waiting_for_start', -1, -1, c.start_ms - now, 0, n, early}
  end
  local rank = redis.call('ZRANK', queue, ticket)
  local admitted_count = math.floor(cursor + EPS)
  if rank < admitted_count then
    local at = tonumber(redis.call('HGET', admitted, ticket) or '0')
    if at == 0 then
      at = now
      redis.call('HSET', admitted, ticket, at)
    end
    local status = 'admitted'
    if ttl_ms > 0 and now >= at + ttl_ms then status = 'expired' end
    return {ticket, status, rank, 0, 0, at, n, early}
  end
  local wait = math.ceil((rank + 1 - cursor) * 1000 / c.rate)
  return {ticket, 'queued', rank, rank - admitted_count, wait, 0, n, early}
end

local function out(code, v)
  local r = {code}
  for _, x in ipairs(v) do r[#r + 1] = x end
  return r
end

if op == 'configure' then
  local on, open_ms, start_ms, end_ms, rate =
    ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  if (on ~= '1' and on ~= '0') or not open_ms or not start_ms or not end_ms or not rate or rate <= 0
    or open_ms > start_ms then
    return {'bad_args'}
  end
  local c = config()
  if c then cursor_at(c, true) end -- the cursor moves at the old rate up to now, then at the new one
  redis.call('HSET', cfg_key, 'on', on, 'open_ms', open_ms, 'start_ms', start_ms, 'end_ms', end_ms,
    'rate', tostring(rate))
  return {'configured'}
end

local c = config()

if op == 'status' then
  if not c then return {} end
  local cursor = cursor_at(c, false)
  return {c.on and '1' or '0', redis.call('ZCARD', queue), tonumber(redis.call('HGET', clock, 'early') or '0'),
    math.floor(cursor + EPS), redis.call('HLEN', admitted), tostring(c.rate), c.start_ms}
end

if not c or not c.on then return {'off'} end

if op == 'join' then
  local buyer, ticket, entropy, ttl_ms, min_interval = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  if buyer == nil or buyer == '' or ticket == nil or ticket == '' or not ttl_ms or not min_interval then
    return {'bad_args'}
  end
  local existing = redis.call('HGET', buyers, buyer)
  if existing then
    -- Joining again is a poll of the buyer's ticket, under the same interval: no way around it.
    local last = tonumber(redis.call('HGET', polls, existing) or '')
    if last and now - last < min_interval then return {'too_soon', min_interval - (now - last)} end
    redis.call('HSET', polls, existing, now)
    return out('existing', view(c, existing, cursor_at(c, true), ttl_ms))
  end
  if now < c.open_ms then return {'not_open', c.open_ms - now} end
  if c.end_ms > 0 and now >= c.end_ms then return {'closed'} end
  local remaining = redis.call('HGET', meta, 'remaining')
  if remaining and tonumber(remaining) <= 0 then return {'sold_out'} end
  if redis.call('HEXISTS', tickets, ticket) == 1 then return {'bad_args'} end
  local cursor = cursor_at(c, true) -- under the old length: the newcomer is not admitted retroactively
  local score
  if now < c.start_ms then
    local e = tonumber(entropy)
    if not e or e < 0 or e >= LATE or e ~= math.floor(e) then return {'bad_args'} end
    score = entropy
    redis.call('HINCRBY', clock, 'early', 1)
  else
    score = LATE + redis.call('HINCRBY', clock, 'seq', 1)
  end
  redis.call('ZADD', queue, score, ticket)
  redis.call('HSET', buyers, buyer, ticket)
  redis.call('HSET', tickets, ticket, buyer)
  redis.call('HSET', polls, ticket, now)
  return out('new', view(c, ticket, cursor, ttl_ms))
end

if op == 'poll' then
  local buyer, ticket, min_interval, ttl_ms = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  if not min_interval or not ttl_ms then return {'bad_args'} end
  if redis.call('HGET', tickets, ticket) ~= buyer then return {'unknown_ticket'} end
  local remaining = redis.call('HGET', meta, 'remaining')
  if remaining and tonumber(remaining) <= 0 then return {'sold_out'} end
  local last = tonumber(redis.call('HGET', polls, ticket) or '')
  if last and now - last < min_interval then return {'too_soon', min_interval - (now - last)} end
  redis.call('HSET', polls, ticket, now)
  return out('ok', view(c, ticket, cursor_at(c, true), ttl_ms))
end

return {'bad_args'}
