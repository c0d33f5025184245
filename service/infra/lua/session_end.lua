-- End sessions: delete their records and index entries. Only deletes, so it still works
-- when Redis is full (noeviction refuses writes, never deletions).
-- KEYS[1] the user's session index, KEYS[2..] the session hashes; ARGV the matching sids.
-- Returns how many sessions were live.
local ended = 0
for i = 2, #KEYS do
  ended = ended + redis.call("DEL", KEYS[i])
  redis.call("ZREM", KEYS[1], ARGV[i - 1])
end
if redis.call("ZCARD", KEYS[1]) == 0 then
  redis.call("DEL", KEYS[1])
end
return ended
