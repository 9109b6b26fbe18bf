-- wrk script for the buy API: POST {"quantity":1} with a different buyer's bearer token on every request.
-- Usage: wrk -t1 -c64 -d10s -s bench/reserve.lua http://127.0.0.1:PORT -- TOKENS_FILE PATH
--   TOKENS_FILE  one token a line (stampede mint-token --count N, second column) or 'sub<TAB>token' lines
--   PATH         request path, e.g. /v1/sales/bench-10m/reservations
-- done() prints one JSON line (prefix WRK_JSON) that bench/api.py reads.
local tokens, n, i = {}, 0, 0
local path = "/"
local body = '{"quantity":1}'

function init(args)
  local file = args[1]
  path = args[2] or path
  for line in io.lines(file) do
    local tok = line:match("\t(.+)$") or line
    if #tok > 0 then
      n = n + 1
      tokens[n] = tok
    end
  end
  -- Each thread starts at a different place in the list.
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
  i = math.random(n) - 1
end

function request()
  i = i % n + 1
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"non2xx":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"timeouts":%d,"p50_ms":%.2f,"p90_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f}\n',
    summary.requests, secs, summary.requests / secs, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
