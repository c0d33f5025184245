-- Start a session for a user whose password was just checked; end the user's oldest sessions
-- beyond the cap, and forget index entries whose session has expired.
-- KEYS[1] user hash, KEYS[2] the user's session index (sorted set: sid -> created ms),
-- KEYS[3] the new session hash. Other session hashes of the user are KEYS[3] with another
-- sid: the same hash tag, so the same cluster slot.
-- ARGV[1] the token_version the login saw, ARGV[2] the session cap, ARGV[3] the new sid,
-- ARGV[4] created (ms), ARGV[5] the record's TTL (ms), then field/value pairs of the record.
-- Returns 1 started, 0 refused (the user was changed, disabled or deleted meanwhile).
local user = redis.call("HMGET", KEYS[1], "token_version", "disabled")
if not user[1] or user[1] ~= ARGV[1] or user[2] == "1" then
  return 0
end
local prefix = string.sub(KEYS[3], 1, #KEYS[3] - #ARGV[3])
for _, sid in ipairs(redis.call("ZRANGE", KEYS[2], 0, -1)) do
  if redis.call("EXISTS", prefix .. sid) == 0 then
    redis.call("ZREM", KEYS[2], sid)
  end
end
local cap = tonumber(ARGV[2])
while redis.call("ZCARD", KEYS[2]) >= cap do
  local oldest = redis.call("ZRANGE", KEYS[2], 0, 0)[1]
  redis.call("DEL", prefix .. oldest)
  redis.call("ZREM", KEYS[2], oldest)
end
redis.call("HSET", KEYS[3], unpack(ARGV, 6))
redis.call("PEXPIRE", KEYS[3], ARGV[5])
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[3])
if redis.call("PTTL", KEYS[2]) < tonumber(ARGV[5]) then
  redis.call("PEXPIRE", KEYS[2], ARGV[5])
end
return 1
