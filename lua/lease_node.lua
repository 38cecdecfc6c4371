-- lease_node.lua: takes or renews this node's lease on its node id, so two
-- live nodes never mint ids with the same node bits.
--
-- KEYS[1]  <prefix>:node:<id>  string  the holder's token, with an expiry
-- ARGV[1]  this node's token   ARGV[2] lease ms
-- Reply:   1 held by us (taken or renewed), 0 held by another live node
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
