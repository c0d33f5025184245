-- Refresh-token rotation with reuse detection (OAuth 2.0 Security BCP, section 4.14).
-- KEYS[1] user hash, KEYS[2] revoked-jti key, KEYS[3] used-refresh-jti key.
-- ARGV[1] the token's version, ARGV[2] ms the used marker must outlive the token,
-- ARGV[3] a fresh token_version, written when reuse is detected so every token of the user dies.
-- Returns 0 rotated, 2 revoked, 3 user gone/disabled/stale, 4 reuse detected.
if redis.call("EXISTS", KEYS[2]) == 1 then
  return 2
end
local user = redis.call("HMGET", KEYS[1], "token_version", "disabled")
if not user[1] or user[1] ~= ARGV[1] or user[2] == "1" then
  return 3
end
if not redis.call("SET", KEYS[3], "1", "NX", "PX", ARGV[2]) then
  redis.call("HSET", KEYS[1], "token_version", ARGV[3])
  return 4
end
return 0
