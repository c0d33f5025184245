-- wrk script of `make bench` (deploy/bench/bench.py): the request comes from the environment
-- (BENCH_METHOD, BENCH_TOKENS_FILE, BENCH_BODY_FILE) so one script serves every scenario, and
-- done() prints exact percentiles as one JSON line, which wrk.py parses instead of
-- wrk's rounded human-readable table.
--
-- BENCH_TOKENS_FILE holds one bearer token per line (none: no Authorization header). With
-- one token the request is static (wrk sends the same bytes every time); with several, each
-- wrk thread builds one request per token once, in init(), and request() hands them out in
-- turn, so consecutive requests of a connection belong to different users.

local method = os.getenv("BENCH_METHOD") or "GET"
local tokens_file = os.getenv("BENCH_TOKENS_FILE") or ""
local body_file = os.getenv("BENCH_BODY_FILE") or ""

local tokens = {}
if tokens_file ~= "" then
  for line in io.lines(tokens_file) do
    if line ~= "" then
      tokens[#tokens + 1] = line
    end
  end
end

wrk.method = method
if body_file ~= "" then
  local handle = assert(io.open(body_file, "rb"))
  wrk.body = handle:read("*a")
  handle:close()
  wrk.headers["Content-Type"] = "application/json"
end
if #tokens == 1 then
  wrk.headers["Authorization"] = "Bearer " .. tokens[1]
end

if #tokens > 1 then
  local requests = {}
  local index = 0

  function init(args)
    -- wrk.headers already carries Host here (wrk.init sets it before calling init).
    for i, token in ipairs(tokens) do
      local headers = {}
      for name, value in pairs(wrk.headers) do
        headers[name] = value
      end
      headers["Authorization"] = "Bearer " .. token
      requests[i] = wrk.format(nil, nil, headers, nil)
    end
  end

  function request()
    index = index % #requests + 1
    return requests[index]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
