-- Create a user only if absent, so concurrent start-ups create exactly one admin.
-- KEYS[1] user hash, KEYS[2] the set of usernames; ARGV: field, value, field, value, ...
-- ARGV[1] is the username. Returns 1 created, 0 already there.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return 0
end
redis.call("HSET", KEYS[1], unpack(ARGV, 2))
redis.call("SADD", KEYS[2], ARGV[1])
return 1
