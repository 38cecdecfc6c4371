-- update_event.lua: an operator's change to an event (name, prices, sale
-- window, pause, cancel), compare-and-set on its revision. It bumps the
-- event's version: every node's actor finds its memory stale at its next
-- commit and reloads, so no hold decided on the old definition is written.
--
-- KEYS[1]  {p}:ev:<id>:sale  hash  rev -> the settings' revision, body -> settings JSON
-- KEYS[2]  {p}:ev:<id>:ver   string  the event's version
-- KEYS[3]  {p}:ev:<id>:def   string  event JSON (must exist)
-- KEYS[4]  {p}:ev:<id>:holds  KEYS[5] :paid  hashes (see ARGV[5])
-- KEYS[6]  {p}:marker        string  the Redis data set's identity
-- ARGV[1]  the revision the change was made on
-- ARGV[2]  the new revision   ARGV[3] settings JSON
-- ARGV[4]  the definition's own revision (what counts while KEYS[1] is absent)
-- ARGV[5]  "" or the opening instant in Unix ms: a change of prices applies
--          only before it by this server's clock (the one hold.lua checks
--          the opening against) and while no seat is held or sold, so no
--          category ever has orders at two prices
-- Reply:   1 applied, 0 refused (no such event, or changed meanwhile),
--          2 refused: the sale has opened or seats are taken
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
if ARGV[5] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now >= tonumber(ARGV[5]) or redis.call('HLEN', KEYS[4]) > 0 or redis.call('HLEN', KEYS[5]) > 0 then
    return 2
  end
end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'body', ARGV[3])
redis.call('INCR', KEYS[2])
return 1
