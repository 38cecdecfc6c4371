-- create_packet.lua: creates a packet with its parts split up front.
--
-- KEYS[1]  {p}:pk:<id>:def    string  packet JSON
-- KEYS[2]  {p}:pk:<id>:parts  list    part amounts in fen, in grab order
-- KEYS[3]  {p}:pk:<id>:state  hash    status, next (part index), count, expires
-- KEYS[4]  {p}:due            zset    "p:<packet>" scored by expiry ms
-- KEYS[5]  {p}:outbox         stream
-- KEYS[6]  {p}:marker         string  the Redis data set's identity (absent: lost, see below)
-- ARGV[1]  packet id   ARGV[2] packet JSON   ARGV[3] expiry ms
-- ARGV[4]  envelope JSON   ARGV[5..] part amounts
-- Reply:   1 created, 0 rejected (exists or no parts)
-- A partition without its marker lost its data (a Redis restarted empty,
-- a failover to a replica that had not seen it): write nothing, so
-- nothing is acknowledged that cannot be persisted; rush rebuilds it.
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
if redis.call('EXISTS', KEYS[1]) == 1 or #ARGV < 5 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
-- In slices: Lua's unpack has a bound on arguments.
local i = 5
while i <= #ARGV do
  local last = math.min(i + 999, #ARGV)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('HSET', KEYS[3], 'status', 'active', 'next', 0, 'count', #ARGV - 4, 'expires', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[3], 'p:' .. ARGV[1])
redis.call('XADD', KEYS[5], '*', 'body', ARGV[4])
return 1
