-- Rotate a session's refresh token (compare-and-swap on the session record), with reuse
-- detection: presenting any refresh token but the session's current one ends the session.
-- KEYS[1] user hash, KEYS[2] the user's session index, KEYS[3] the session hash.
-- ARGV[1] the token's version, ARGV[2] its jti, ARGV[3] the sid, ARGV[4] the new refresh jti,
-- ARGV[5] now (ms), ARGV[6] the new refresh token's expiry (ms), ARGV[7] the record's TTL (ms).
-- Returns 0 rotated, 2 session ended, 3 user gone/disabled/stale, 4 reuse (session ended now).
if redis.call("EXISTS", KEYS[3]) == 0 then
  return 2
end
local user = redis.call("HMGET", KEYS[1], "token_version", "disabled")
if not user[1] or user[1] ~= ARGV[1] or user[2] == "1" then
  return 3
end
if redis.call("HGET", KEYS[3], "refresh_jti") ~= ARGV[2] then
  redis.call("DEL", KEYS[3])
  redis.call("ZREM", KEYS[2], ARGV[3])
  return 4
end
redis.call("HSET", KEYS[3], "refresh_jti", ARGV[4], "last_used", ARGV[5], "expires", ARGV[6])
redis.call("PEXPIRE", KEYS[3], ARGV[7])
if redis.call("PTTL", KEYS[2]) < tonumber(ARGV[7]) then
  redis.call("PEXPIRE", KEYS[2], ARGV[7])
end
return 0
