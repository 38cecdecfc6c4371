-- refund.lua: paid orders of one event are refunded: their seats become
-- available again, the order leaves the paid set and its seats the user's
-- count. The caller has already had the money given back through the
-- payment channel. Versioned as `hold.lua` is.
--
-- KEYS[1]  {p}:ev:<id>:seats  hash
-- KEYS[2]  {p}:ev:<id>:paid   hash  order id -> order JSON (with "seats", "user_id")
-- KEYS[3]  {p}:outbox         stream
-- KEYS[4]  {p}:ev:<id>:ver    string
-- KEYS[5]  {p}:ev:<id>:users  hash
-- KEYS[6]  {p}:marker         string  the Redis data set's identity (absent: lost, see below)
-- ARGV[1]  event id
-- ARGV[2]  the version the batch was decided on ("" = unchecked)
-- ARGV[3]  n, then 2 per order: order id, envelope JSON
-- Reply:   {-1} stale, or {version after, then n integers: 1 refunded, 0 rejected (not paid)}
-- A partition without its marker lost its data (a Redis restarted empty,
-- a failover to a replica that had not seen it): write nothing, so
-- nothing is acknowledged that cannot be persisted; rush rebuilds it.
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
local ver = tonumber(redis.call('GET', KEYS[4]) or '0')
if ARGV[2] ~= '' and ver ~= tonumber(ARGV[2]) then
  return {-1}
end
local out = {0}
local applied = 0
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local order, env = ARGV[4 + i * 2], ARGV[5 + i * 2]
  local body = redis.call('HGET', KEYS[2], order)
  if body then
    local o = cjson.decode(body)
    for _, s in ipairs(o.seats) do
      redis.call('HDEL', KEYS[1], tostring(s))
    end
    if redis.call('HINCRBY', KEYS[5], o.user_id, -#o.seats) <= 0 then
      redis.call('HDEL', KEYS[5], o.user_id)
    end
    redis.call('HDEL', KEYS[2], order)
    redis.call('XADD', KEYS[3], '*', 'body', env)
    applied = applied + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if applied > 0 then
  ver = redis.call('INCR', KEYS[4])
end
out[1] = ver
return out
