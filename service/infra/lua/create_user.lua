-- Create a user only if absent, so concurrent start-ups create exactly one admin.
-- KEYS[1] user hash; ARGV: field, value, field, value, ... Returns 1 created, 0 already there.
-- (The caller adds the name to the set of users first: a different cluster slot.)
if redis.call("EXISTS", KEYS[1]) == 1 then
  return 0
end
redis.call("HSET", KEYS[1], unpack(ARGV))
return 1
