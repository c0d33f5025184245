#!lua flags=allow-oom
-- Update fields of an existing user; never creates a half-made record for a missing one.
-- KEYS[1] user hash; ARGV[1] number of fields to delete, then those names, then field/value pairs.
-- Returns 1 updated, 0 no such user.
-- allow-oom: these updates revoke (disable, new token_version, new password) and grow memory
-- by a few bytes at most, so a full Redis must not keep a stolen token alive.
if redis.call("EXISTS", KEYS[1]) == 0 then
  return 0
end
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  redis.call("HDEL", KEYS[1], ARGV[i])
end
if #ARGV > n + 1 then
  redis.call("HSET", KEYS[1], unpack(ARGV, n + 2))
end
return 1
