-- expire_packet.lua: closes a packet at or after its expiry; the parts not
-- grabbed are its remainder, to be unfrozen for the sender.
--
-- KEYS[1]  {p}:pk:<id>:parts  list
-- KEYS[2]  {p}:pk:<id>:state  hash
-- KEYS[3]  {p}:due            zset
-- KEYS[4]  {p}:outbox         stream
-- KEYS[5]  {p}:marker         string  the Redis data set's identity (absent: lost, see below)
-- ARGV[1]  now ms   ARGV[2] packet id
-- ARGV[3]  envelope JSON whose "remaining" is -9223372036854775808, replaced here
-- Reply:   the remainder in fen, or -1 (unknown, already expired, not due)
-- A partition without its marker lost its data (a Redis restarted empty,
-- a failover to a replica that had not seen it): write nothing, so
-- nothing is acknowledged that cannot be persisted; rush rebuilds it.
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
local st = redis.call('HMGET', KEYS[2], 'status', 'next', 'expires')
if not st[1] or st[1] == 'expired' or tonumber(ARGV[1]) < tonumber(st[3]) then
  return -1
end
local remaining = 0
for _, p in ipairs(redis.call('LRANGE', KEYS[1], tonumber(st[2]), -1)) do
  remaining = remaining + tonumber(p)
end
redis.call('HSET', KEYS[2], 'status', 'expired')
redis.call('ZREM', KEYS[3], 'p:' .. ARGV[2])
local env = string.gsub(ARGV[3], '"remaining":%-9223372036854775808', '"remaining":' .. string.format('%d', remaining))
redis.call('XADD', KEYS[4], '*', 'body', env)
return remaining
