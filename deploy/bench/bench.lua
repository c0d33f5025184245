-- wrk script of `make bench` (deploy/bench/bench.py): the request comes from the environment
-- (BENCH_METHOD, BENCH_TOKEN, BENCH_BODY_FILE) so one script serves every scenario, and
-- done() prints exact percentiles as one JSON line, which wrk.py parses instead of
-- wrk's rounded human-readable table.

local method = os.getenv("BENCH_METHOD") or "GET"
local token = os.getenv("BENCH_TOKEN") or ""
local body_file = os.getenv("BENCH_BODY_FILE") or ""

wrk.method = method
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
if body_file ~= "" then
  local handle = assert(io.open(body_file, "rb"))
  wrk.body = handle:read("*a")
  handle:close()
  wrk.headers["Content-Type"] = "application/json"
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
