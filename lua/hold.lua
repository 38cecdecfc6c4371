-- hold.lua: holds seats for a batch of orders of one event. Each order is
-- all or nothing; a rejected order writes nothing. Every check happens
-- before that order's first write (Redis does not roll a script back).
--
-- The batch was decided on the event at version ARGV[2]; if the event has
-- changed since (another node wrote it), nothing is written and the reply
-- is {-1}: the actor reloads and decides again. Each call that writes
-- bumps the version, so an actor whose version matches knows its memory is
-- the store's state, refusals included.
--
-- KEYS[1]  {p}:ev:<id>:seats  hash  seat index -> "h:<order>" | "s:<order>" (absent = available)
-- KEYS[2]  {p}:ev:<id>:holds  hash  order id -> order JSON
-- KEYS[3]  {p}:ev:<id>:n      string  the event's seat count
-- KEYS[4]  {p}:due            zset  "h:<event>:<order>" scored by expiry ms
-- KEYS[5]  {p}:outbox         stream  entries {body = envelope JSON}
-- KEYS[6]  {p}:ev:<id>:ver    string  the event's version (absent = 0)
-- KEYS[7]  {p}:ev:<id>:users  hash  user id -> seats held or bought (the per-user limit)
-- KEYS[8]  {p}:marker         string  the Redis data set's identity (absent: lost, see below)
-- ARGV[1]  event id
-- ARGV[2]  the version the batch was decided on ("" = unchecked)
-- ARGV[3]  seats per user at most
-- ARGV[4]  n, then 6 per order: order id, seat indexes "i,j,k",
--          expiry ms, order JSON, envelope JSON, user id
-- ARGV[5+6n], ARGV[6+6n]  the sale window [on, ends) in Unix ms, checked
--          against this server's clock (TIME): one clock for every node,
--          so no hold is taken before the opening instant whatever the
--          nodes' clocks say
-- Reply:   {-1} stale, or {version after, then n integers: 1 held, 0
--          rejected (unknown event, order exists, a seat out of range or
--          not available, over the user's limit), 2 outside the sale
--          window}
-- A partition without its marker lost its data (a Redis restarted empty,
-- a failover to a replica that had not seen it): write nothing, so
-- nothing is acknowledged that cannot be persisted; rush rebuilds it.
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
local ver = tonumber(redis.call('GET', KEYS[6]) or '0')
if ARGV[2] ~= '' and ver ~= tonumber(ARGV[2]) then
  return {-1}
end
local seat_count = tonumber(redis.call('GET', KEYS[3]) or '-1')
local per_user = tonumber(ARGV[3])
local out = {0}
local applied = 0
local n = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local off_sale = now < tonumber(ARGV[5 + 6 * n]) or now >= tonumber(ARGV[6 + 6 * n])
for i = 0, n - 1 do
  local b = 5 + i * 6
  local order, csv, expiry, body, env, user = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local ok = not off_sale and seat_count > 0 and csv ~= '' and redis.call('HEXISTS', KEYS[2], order) == 0
  local seats = {}
  if ok then
    for s in string.gmatch(csv, '[^,]+') do
      local idx = tonumber(s)
      if idx == nil or idx < 0 or idx >= seat_count or redis.call('HEXISTS', KEYS[1], s) == 1 then
        ok = false
        break
      end
      seats[#seats + 1] = s
    end
  end
  if ok and tonumber(redis.call('HGET', KEYS[7], user) or '0') + #seats > per_user then
    ok = false
  end
  if ok then
    for _, s in ipairs(seats) do
      redis.call('HSET', KEYS[1], s, 'h:' .. order)
    end
    redis.call('HSET', KEYS[2], order, body)
    redis.call('HINCRBY', KEYS[7], user, #seats)
    redis.call('ZADD', KEYS[4], expiry, 'h:' .. ARGV[1] .. ':' .. order)
    redis.call('XADD', KEYS[5], '*', 'body', env)
    applied = applied + 1
    out[#out + 1] = 1
  elseif off_sale then
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
if applied > 0 then
  ver = redis.call('INCR', KEYS[6])
end
out[1] = ver
return out
