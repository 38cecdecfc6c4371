-- claim_due.lua: claims due items of one partition's delay queue for a
-- lease: each returned item is pushed to now + lease, so other nodes do not
-- take it meanwhile; settling it (release, confirm, expire) removes it, and
-- if the claiming node dies the lease runs out and another node takes it.
--
-- KEYS[1]  {p}:due  zset  "h:<event>:<order>" | "p:<packet>" scored by due ms
-- ARGV[1]  now ms   ARGV[2] limit   ARGV[3] lease ms
-- Reply:   flat array: member, due ms, member, due ms, … (oldest first)
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[3])
for i = 1, #items, 2 do
  redis.call('ZADD', KEYS[1], until_ms, items[i])
end
return items
