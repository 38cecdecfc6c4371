-- confirm.lua: held orders of one event are paid: their seats become sold,
-- the order moves from holds to paid, its deadline is removed.
--
-- KEYS[1]  {p}:ev:<id>:seats  hash
-- KEYS[2]  {p}:ev:<id>:holds  hash  order id -> order JSON (with "seats")
-- KEYS[3]  {p}:ev:<id>:paid   hash  order id -> order JSON
-- KEYS[4]  {p}:due            zset
-- KEYS[5]  {p}:outbox         stream
-- ARGV[1]  event id
-- ARGV[2]  n, then 2 per order: order id, envelope JSON
-- Reply:   array of n integers: 1 confirmed, 0 rejected (not held)
local out = {}
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local order, env = ARGV[3 + i * 2], ARGV[4 + i * 2]
  local body = redis.call('HGET', KEYS[2], order)
  if body then
    for _, s in ipairs(cjson.decode(body).seats) do
      redis.call('HSET', KEYS[1], tostring(s), 's:' .. order)
    end
    redis.call('HDEL', KEYS[2], order)
    redis.call('HSET', KEYS[3], order, body)
    redis.call('ZREM', KEYS[4], 'h:' .. ARGV[1] .. ':' .. order)
    redis.call('XADD', KEYS[5], '*', 'body', env)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
