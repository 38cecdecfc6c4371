-- grab.lua: a batch of grabs of one packet, in order. A grab is applied
-- when the packet is active and not past its expiry, the user has not
-- grabbed it, and it takes exactly the next part with that part's amount.
--
-- KEYS[1]  {p}:pk:<id>:parts  list
-- KEYS[2]  {p}:pk:<id>:state  hash  status, next, count, expires
-- KEYS[3]  {p}:pk:<id>:grabs  hash  user id -> grab JSON
-- KEYS[4]  {p}:outbox         stream
-- KEYS[5 .. 4+n]  {u:<user>}:grabs  zset  each grab's user's recent grabs,
--          only when ARGV[3] is set (one Redis: a key of any slot may be
--          written; a cluster passes none and rush writes them after)
-- KEYS[#KEYS]  {p}:marker     string  the Redis data set's identity (absent: lost, see below)
-- ARGV[1]  now ms
-- ARGV[2]  n, then 5 per grab: user id, part index, amount, grab JSON, envelope JSON
-- ARGV[3+5n]  "" or how long a user's recent grabs are kept (ms); then
--          per grab its recent-grabs member "<grab id>:<amount>"
-- Reply:   array of n integers: 1 granted, 0 rejected
-- A partition without its marker lost its data (a Redis restarted empty,
-- a failover to a replica that had not seen it): write nothing, so
-- nothing is acknowledged that cannot be persisted; rush rebuilds it.
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
local st = redis.call('HMGET', KEYS[2], 'status', 'next', 'count', 'expires')
local status, nxt, count, expires = st[1], tonumber(st[2] or '0'), tonumber(st[3] or '0'), tonumber(st[4] or '0')
local now = tonumber(ARGV[1])
local out = {}
local n = tonumber(ARGV[2])
local keep = ARGV[3 + 5 * n]
for i = 0, n - 1 do
  local b = 3 + i * 5
  local user, part, amount, body, env = ARGV[b], tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local ok = status == 'active' and now < expires and part == nxt and nxt < count
    and redis.call('HEXISTS', KEYS[3], user) == 0
    and redis.call('LINDEX', KEYS[1], part) == amount
  if ok then
    redis.call('HSET', KEYS[3], user, body)
    redis.call('XADD', KEYS[4], '*', 'body', env)
    if keep ~= '' then
      redis.call('ZADD', KEYS[5 + i], now, ARGV[4 + 5 * n + i])
      redis.call('PEXPIRE', KEYS[5 + i], keep)
    end
    nxt = nxt + 1
    if nxt == count then
      status = 'empty'
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if status then
  redis.call('HSET', KEYS[2], 'next', nxt, 'status', status)
end
return out
