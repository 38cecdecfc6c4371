-- restore_event.lua: puts an event's merged state back (recovery after a
-- lost or rolled-back Redis, see engine/src/store/restore.rs). Runs while
-- the partition markers are absent, so no other script writes meanwhile;
-- the version check guards against a second rebuilder all the same.
--
-- KEYS[1]  {p}:ev:<id>:def    KEYS[2] :n      KEYS[3] :seats   KEYS[4] :holds
-- KEYS[5]  {p}:ev:<id>:paid   KEYS[6] :users  KEYS[7] :ver     KEYS[8] {p}:due
-- ARGV[1]  event id   ARGV[2] the version read before the merge ("" = none)
-- ARGV[3]  the new version (above any an actor can remember)
-- ARGV[4]  event JSON   ARGV[5] seat count
-- then: n holds, 4 each (order id, order JSON, expiry ms, user id);
--       n paid, 3 each (order id, order JSON, user id);
--       n seats, 2 each (seat index, "h:<order>" | "s:<order>");
--       n closed holds (order ids: their due entries go)
-- Reply:   1, or -1 when the version moved since it was read
if (redis.call('GET', KEYS[7]) or '') ~= ARGV[2] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local i = 6
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local order, body, expiry, user = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  redis.call('HSET', KEYS[4], order, body)
  redis.call('ZADD', KEYS[8], expiry, 'h:' .. ARGV[1] .. ':' .. order)
  i = i + 4
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
  i = i + 3
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('ZREM', KEYS[8], 'h:' .. ARGV[1] .. ':' .. ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[7], ARGV[3])
return 1
