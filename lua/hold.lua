-- hold.lua: holds seats for a batch of orders of one event. Each order is
-- all or nothing; a rejected order writes nothing. Every check happens
-- before that order's first write (Redis does not roll a script back).
--
-- KEYS[1]  {p}:ev:<id>:seats  hash  seat index -> "h:<order>" | "s:<order>" (absent = available)
-- KEYS[2]  {p}:ev:<id>:holds  hash  order id -> order JSON
-- KEYS[3]  {p}:ev:<id>:n      string  the event's seat count
-- KEYS[4]  {p}:due            zset  "h:<event>:<order>" scored by expiry ms
-- KEYS[5]  {p}:outbox         stream  entries {body = envelope JSON}
-- ARGV[1]  event id
-- ARGV[2]  n, then 5 per order: order id, seat indexes "i,j,k",
--          expiry ms, order JSON, envelope JSON
-- Reply:   array of n integers: 1 held, 0 rejected (unknown event, order
--          exists, a seat out of range or not available)
local seat_count = tonumber(redis.call('GET', KEYS[3]) or '-1')
local out = {}
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local b = 3 + i * 5
  local order, csv, expiry, body, env = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local ok = seat_count > 0 and csv ~= '' and redis.call('HEXISTS', KEYS[2], order) == 0
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
  if ok then
    for _, s in ipairs(seats) do
      redis.call('HSET', KEYS[1], s, 'h:' .. order)
    end
    redis.call('HSET', KEYS[2], order, body)
    redis.call('ZADD', KEYS[4], expiry, 'h:' .. ARGV[1] .. ':' .. order)
    redis.call('XADD', KEYS[5], '*', 'body', env)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
