-- idempotency.lua: an Idempotency-Key record, one call per step.
--
-- KEYS[1]  {p}:idem:<user>:<key>  hash  hash, status (0 = in progress), body; expires after the TTL
-- ARGV[1]  'begin' | 'finish' | 'abandon'
-- begin:   ARGV[2] request hash, ARGV[3] TTL ms, ARGV[4] stale ms, ARGV[5] now ms
--          Reply {1} new (claimed); {2, status, body} replay; {3} another
--          request used the key; {4} in progress
-- finish:  ARGV[2] status, ARGV[3] body. Reply 1
-- abandon: deletes a claim still in progress. Reply 1
-- forget:  ARGV[2] status: deletes a finished record holding that status. Reply 1
local op = ARGV[1]
if op == 'begin' then
  local rec = redis.call('HMGET', KEYS[1], 'hash', 'status', 'body', 'at')
  if rec[1] then
    local stale = rec[2] == '0' and tonumber(ARGV[5]) - tonumber(rec[4]) > tonumber(ARGV[4])
    if not stale then
      if rec[1] ~= ARGV[2] then
        return {3}
      elseif rec[2] == '0' then
        return {4}
      else
        return {2, tonumber(rec[2]), rec[3]}
      end
    end
  end
  redis.call('HSET', KEYS[1], 'hash', ARGV[2], 'status', 0, 'body', '', 'at', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
elseif op == 'finish' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'body', ARGV[3])
  return 1
elseif op == 'forget' then
  if redis.call('HGET', KEYS[1], 'status') == ARGV[2] then
    redis.call('DEL', KEYS[1])
  end
  return 1
elseif op == 'abandon' then
  if redis.call('HGET', KEYS[1], 'status') == '0' then
    redis.call('DEL', KEYS[1])
  end
  return 1
end
return redis.error_reply('unknown idempotency op ' .. tostring(op))
