-- Delete a user record (a script so that it can be waited on like every revoking write).
-- KEYS[1] user hash. Returns 1 deleted, 0 no such user.
return redis.call("DEL", KEYS[1])
