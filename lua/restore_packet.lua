-- restore_packet.lua: puts a packet's merged state back (recovery after a
-- lost or rolled-back Redis, see engine/src/store/restore.rs). Runs while
-- the partition markers are absent, so no other script writes meanwhile.
--
-- KEYS[1]  {p}:pk:<id>:def   KEYS[2] :parts   KEYS[3] :state   KEYS[4] :grabs
-- KEYS[5]  {p}:due
-- ARGV[1]  packet id   ARGV[2] packet JSON   ARGV[3] expiry ms
-- ARGV[4]  status   ARGV[5] next (grabs so far)   ARGV[6] count
-- then: n parts (amounts, grabbed ones first), n grabs, 2 each (user id, grab JSON)
-- Reply:   1
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[4])
local i = 7
local n = tonumber(ARGV[i])
i = i + 1
local last = i + n - 1
while i <= last do
  local to = math.min(i + 999, last)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, to))
  i = to + 1
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[3], 'status', ARGV[4], 'next', ARGV[5], 'count', ARGV[6], 'expires', ARGV[3])
if ARGV[4] == 'active' then
  redis.call('ZADD', KEYS[5], ARGV[3], 'p:' .. ARGV[1])
else
  redis.call('ZREM', KEYS[5], 'p:' .. ARGV[1])
end
return 1
