-- The per-request gate: token state check and/or rate count, atomically, in one round trip.
-- Time comes from Redis so that every instance shares one clock.
--
-- ARGV[1] "1" to check the token: KEYS[1] user hash, KEYS[2] the token's session hash
--         (it must exist: ending a session deletes it), ARGV[3] the token's version
--         (it must equal the user's token_version).
-- ARGV[2] "1" to count a request: KEYS[#KEYS] the counter (a string: see below),
--         ARGV[4] default limit, ARGV[5] default window (ms),
--         ARGV[6] "1" when the user's own rate override applies.
-- Returns {status, limit, window_ms, remaining, reset_ms}:
--   status 0 admitted, 1 rate limited, 2 session ended, 3 user gone/disabled/token version stale;
--   reset_ms: until the quota is whole again (admitted), or until a request fits (limited).
--
-- The count is GCRA (the generic cell rate algorithm): `limit` requests per `window` ms means
-- one every T = window / limit ms with bursts of up to `limit`. The counter holds one number,
-- the theoretical arrival time (TAT) of the next request, and expires when it is in the past:
-- O(1) memory per counter whatever the limit. A request is admitted when, after it, the TAT
-- is at most `window` ahead of now.
local check_token = ARGV[1] == "1"
local count_rate = ARGV[2] == "1"
local limit = tonumber(ARGV[4])
local window = tonumber(ARGV[5])

if check_token then
  if redis.call("EXISTS", KEYS[2]) == 0 then
    return {2, 0, 0, 0, 0}
  end
  local user = redis.call("HMGET", KEYS[1], "token_version", "disabled", "rl_limit", "rl_window_ms")
  if not user[1] or user[1] ~= ARGV[3] or user[2] == "1" then
    return {3, 0, 0, 0, 0}
  end
  if ARGV[6] == "1" and user[3] and user[4] then
    limit = tonumber(user[3])
    window = tonumber(user[4])
  end
end

if not count_rate then
  return {0, 0, 0, 0, 0}
end

local key = KEYS[#KEYS]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = window / limit
local tat = tonumber(redis.call("GET", key) or now)
if tat < now then
  tat = now
end
local after = tat + interval
-- 1 µs of tolerance: limit x interval may round above window in floating point.
if after - now > window + 0.001 then
  -- Refused: admitted again once the TAT has come within window - interval of now (more
  -- than one interval away when an admin has just lowered a user's limit).
  return {1, limit, window, 0, math.ceil(after - window - now)}
end
redis.call("SET", key, string.format("%.3f", after), "PX", math.ceil(after - now))
local remaining = math.floor((window - (after - now)) / interval + 0.000001)
return {0, limit, window, remaining, math.ceil(after - now)}
