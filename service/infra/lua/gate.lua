-- The per-request gate: token state check and/or sliding-window rate limit, atomically, in
-- one round trip. Time comes from Redis so that every instance shares one clock.
--
-- ARGV[1] "1" to check the token: KEYS[1] user hash, KEYS[2] the token's session hash
--         (it must exist: ending a session deletes it), ARGV[3] the token's version
--         (it must equal the user's token_version).
-- ARGV[2] "1" to count a request: KEYS[#KEYS] the window's sorted set,
--         ARGV[4] default limit, ARGV[5] default window (ms), ARGV[6] unique member,
--         ARGV[7] "1" when the user's own rate override applies.
-- Returns {status, limit, window_ms, remaining, reset_ms}:
--   status 0 admitted, 1 rate limited, 2 session ended, 3 user gone/disabled/token version stale.
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
  if ARGV[7] == "1" and user[3] and user[4] then
    limit = tonumber(user[3])
    window = tonumber(user[4])
  end
end

if not count_rate then
  return {0, 0, 0, 0, 0}
end

local key = KEYS[#KEYS]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", key, "-inf", now - window)
local used = redis.call("ZCARD", key)
if used >= limit then
  -- A slot frees when the (used - limit + 1)th oldest entry leaves the window (more than
  -- `limit` entries remain when an admin has just lowered a user's limit).
  local freeing = redis.call("ZRANGE", key, used - limit, used - limit, "WITHSCORES")
  return {1, limit, window, 0, tonumber(freeing[2]) + window - now}
end
redis.call("ZADD", key, now, ARGV[6])
redis.call("PEXPIRE", key, window)
local first = redis.call("ZRANGE", key, 0, 0, "WITHSCORES")
return {0, limit, window, limit - used - 1, tonumber(first[2]) + window - now}
