-- replace_seats.lua: an operator replaces a scheduled event's seat map
-- (with its other settings), compare-and-set on its revision, only while
-- the event holds no seat. Bumps the version, as update_event.lua.
--
-- KEYS[1]  {p}:ev:<id>:sale   hash  rev, body (settings JSON)
-- KEYS[2]  {p}:ev:<id>:ver    string
-- KEYS[3]  {p}:ev:<id>:def    string  event JSON (must exist)
-- KEYS[4]  {p}:ev:<id>:n      string  seat count
-- KEYS[5]  {p}:ev:<id>:seats  KEYS[6] :holds  KEYS[7] :paid  (must be empty)
-- KEYS[8]  {p}:marker
-- ARGV[1]  the revision the change was made on   ARGV[2] the new revision
-- ARGV[3]  settings JSON   ARGV[4] the definition's own revision
-- ARGV[5]  the new event JSON   ARGV[6] its seat count
-- ARGV[7]  the opening instant in Unix ms: replaced only before it, by this
--          server's clock (the one hold.lua checks the opening against)
-- Reply:   1 replaced, 0 changed meanwhile (or no such event), 2 refused:
--          the sale has opened or seats are held or sold
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev') or ARGV[4])
if cur ~= tonumber(ARGV[1]) or tonumber(ARGV[2]) <= cur then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= tonumber(ARGV[7]) or redis.call('HLEN', KEYS[5]) > 0 or redis.call('HLEN', KEYS[6]) > 0
    or redis.call('HLEN', KEYS[7]) > 0 then
  return 2
end
redis.call('SET', KEYS[3], ARGV[5])
redis.call('SET', KEYS[4], ARGV[6])
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'body', ARGV[3])
redis.call('INCR', KEYS[2])
return 1
