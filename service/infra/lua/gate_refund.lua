-- Take back one admitted request of a GCRA counter (see gate.lua): move its TAT one
-- interval earlier, or drop it when that is in the past.
-- KEYS[1] the counter; ARGV[1] the interval (ms) of its rate.
local tat = tonumber(redis.call("GET", KEYS[1]))
if not tat then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local earlier = tat - tonumber(ARGV[1])
if earlier <= now then
  redis.call("DEL", KEYS[1])
else
  redis.call("SET", KEYS[1], string.format("%.3f", earlier), "PX", math.ceil(earlier - now))
end
return 1
