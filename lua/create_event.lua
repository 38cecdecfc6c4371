-- create_event.lua: records a new event's definition and seat count.
--
-- KEYS[1]  {p}:ev:<id>:def  string  event JSON
-- KEYS[2]  {p}:ev:<id>:n    string  the event's seat count
-- KEYS[3]  {p}:marker       string  the Redis data set's identity
-- ARGV[1]  event JSON   ARGV[2] seat count
-- Reply:   1 (an existing definition is left as it is)
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return 1
