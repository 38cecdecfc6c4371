-- refund.lua: paid orders of one event are refunded: their seats become
-- available again and the order leaves the paid set. The caller has
-- already had the money given back through the payment channel.
--
-- KEYS[1]  {p}:ev:<id>:seats  hash
-- KEYS[2]  {p}:ev:<id>:paid   hash  order id -> order JSON (with "seats")
-- KEYS[3]  {p}:outbox         stream
-- ARGV[1]  event id
-- ARGV[2]  n, then 2 per order: order id, envelope JSON
-- Reply:   array of n integers: 1 refunded, 0 rejected (not paid)
local out = {}
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local order, env = ARGV[3 + i * 2], ARGV[4 + i * 2]
  local body = redis.call('HGET', KEYS[2], order)
  if body then
    for _, s in ipairs(cjson.decode(body).seats) do
      redis.call('HDEL', KEYS[1], tostring(s))
    end
    redis.call('HDEL', KEYS[2], order)
    redis.call('XADD', KEYS[3], '*', 'body', env)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
