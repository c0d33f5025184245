-- Store a login's rehash only if the hash it verified is still the stored one, so a password
-- change that lands while Argon2 runs is never overwritten by the old password.
-- KEYS[1] user hash; ARGV[1] the verified hash, ARGV[2] its rehash. Returns 1 stored, 0 not.
if redis.call("HGET", KEYS[1], "hash") ~= ARGV[1] then
  return 0
end
redis.call("HSET", KEYS[1], "hash", ARGV[2])
return 1
