-- grab_direct.lua: direct mode (no actor): decides and applies one grab,
-- the way a typical Redis flash-sale system does: one script call per
-- request, the next part taken inside the script.
--
-- KEYS[1]  {p}:pk:<id>:parts  list
-- KEYS[2]  {p}:pk:<id>:state  hash  status, next, count, expires
-- KEYS[3]  {p}:pk:<id>:grabs  hash  user id -> grab JSON
-- KEYS[4]  {p}:outbox         stream
-- KEYS[5]  {u:<user>}:grabs   zset  the user's recent grabs, only when
--          ARGV[5] is set (one Redis; a cluster writes it after)
-- KEYS[#KEYS]  {p}:marker     string  the Redis data set's identity (absent: lost, see below)
-- ARGV[1]  now ms   ARGV[2] user id (letters, digits, _ - . @: no JSON escaping)
-- ARGV[3]  grab id
-- ARGV[4]  envelope JSON whose "amount" is -9223372036854775808, replaced here
-- ARGV[5]  "" or how long a user's recent grabs are kept (ms)
-- ARGV[6]  with ARGV[5]: ":own" when the user sent the packet, else ""
-- Reply:   {1, amount, part} granted; {2, amount} already grabbed;
--          {3} empty; {4} expired; {0} unknown packet
-- A partition without its marker lost its data (a Redis restarted empty,
-- a failover to a replica that had not seen it): write nothing, so
-- nothing is acknowledged that cannot be persisted; rush rebuilds it.
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
local st = redis.call('HMGET', KEYS[2], 'status', 'next', 'count', 'expires')
if not st[1] then
  return {0}
end
local user = ARGV[2]
local mine = redis.call('HGET', KEYS[3], user)
if mine then
  return {2, cjson.decode(mine).amount}
end
if st[1] == 'expired' or tonumber(ARGV[1]) >= tonumber(st[4]) then
  return {4}
end
local nxt, count = tonumber(st[2]), tonumber(st[3])
if st[1] ~= 'active' or nxt >= count then
  return {3}
end
local amount = tonumber(redis.call('LINDEX', KEYS[1], nxt))
local a = string.format('%d', amount)
redis.call('HSET', KEYS[3], user, '{"grab_id":"' .. ARGV[3] .. '","user_id":"' .. user .. '","part":' .. nxt
  .. ',"amount":' .. a .. ',"at_ms":' .. ARGV[1] .. '}')
nxt = nxt + 1
redis.call('HSET', KEYS[2], 'next', nxt, 'status', nxt == count and 'empty' or 'active')
local env = string.gsub(ARGV[4], '"amount":%-9223372036854775808', '"amount":' .. a)
redis.call('XADD', KEYS[4], '*', 'body', env)
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[1], ARGV[3] .. ':' .. a .. ARGV[6])
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
end
return {1, amount, nxt - 1}
