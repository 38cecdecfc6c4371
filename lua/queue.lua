-- queue.lua: an event's waiting room (engine/src/store/queue.rs says the
-- rules; MemQueue is this script's embedded twin). Every call first admits
-- what the bucket allows by this server's clock, then does its op.
--
-- KEYS[1]  {p}:ev:<id>:q:wait  zset  waiting user -> score (random key in
--          [0,1) before the opening, the join counter after it)
-- KEYS[2]  {p}:ev:<id>:q:tk    hash  user -> "ticket|admit_no|expires_ms"
-- KEYS[3]  {p}:ev:<id>:q:adm   zset  admitted user -> admission expiry ms
-- KEYS[4]  {p}:ev:<id>:q:st    hash  seq (join counter), admitted (count),
--          tokens, last (ms the bucket was last filled)
-- KEYS[5]  {p}:marker          string  (absent: this Redis lost its data)
-- ARGV[1]  op: join | ticket | leave | advance
-- ARGV[2]  user id
-- ARGV[3]  opens ms, ARGV[4] keep the keys until (ms), ARGV[5] pre-queue ms
-- ARGV[6]  admitted per second, ARGV[7] active at most (0: no bound)
-- ARGV[8]  admission ttl ms, ARGV[9] tokens banked at most
-- ARGV[10] a new ticket's id, ARGV[11] its random key ("0.…", in [0,1))
-- Reply:   {state, ticket, admit_no, expires_ms, position, now_ms,
--          admitted now}; state 0 not queued, 1 waiting (position 0 before
--          the opening), 2 admitted, 3 expired, 4 the queue is not open yet
if redis.call('EXISTS', KEYS[5]) == 0 then
  return redis.error_reply('RUSHLOST the hot store lost its data')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, user = ARGV[1], ARGV[2]
local opens, keep, pre = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rate, active_max, ttl, burst = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

local function int(v)
  return string.format('%.0f', v)
end

local function advance()
  if now < opens or rate <= 0 then return 0 end
  local st = redis.call('HMGET', KEYS[4], 'tokens', 'last')
  local tokens = tonumber(st[1]) or 0
  local last = tonumber(st[2]) or opens
  if last < opens then last = opens end
  if now > last then
    tokens = math.min(burst, tokens + (now - last) * rate / 1000)
    last = now
  end
  local n = math.floor(tokens)
  if active_max > 0 then
    n = math.min(n, active_max - redis.call('ZCOUNT', KEYS[3], '(' .. int(now), '+inf'))
  end
  local admitted = 0
  if n > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[1], n)
    for i = 1, #popped, 2 do
      local u = popped[i]
      local no = redis.call('HINCRBY', KEYS[4], 'admitted', 1)
      local tk = redis.call('HGET', KEYS[2], u) or ''
      local id = string.match(tk, '^([^|]*)') or ''
      redis.call('HSET', KEYS[2], u, id .. '|' .. no .. '|' .. int(now + ttl))
      redis.call('ZADD', KEYS[3], int(now + ttl), u)
      admitted = admitted + 1
    end
    tokens = tokens - admitted
  end
  redis.call('HSET', KEYS[4], 'tokens', tostring(tokens), 'last', int(last))
  redis.call('PEXPIREAT', KEYS[4], keep)
  return admitted
end

local function standing(admitted)
  local tk = redis.call('HGET', KEYS[2], user)
  if not tk then return {0, '', 0, 0, 0, now, admitted} end
  local id, no, exp = string.match(tk, '^([^|]*)|([^|]*)|(.*)$')
  no, exp = tonumber(no), tonumber(exp)
  if no > 0 then
    if exp > now then return {2, id, no, exp, 0, now, admitted} end
    return {3, id, no, exp, 0, now, admitted}
  end
  local pos = 0
  if now >= opens then
    local rank = redis.call('ZRANK', KEYS[1], user)
    if rank then pos = rank + 1 end
  end
  return {1, id, 0, 0, pos, now, admitted}
end

if op == 'join' then
  if now < opens - pre then return {4, '', 0, 0, 0, now, 0} end
  local admitted = advance()
  local s = standing(admitted)
  if s[1] == 1 or s[1] == 2 then return s end
  local score = ARGV[11]
  if now >= opens then score = redis.call('HINCRBY', KEYS[4], 'seq', 1) end
  redis.call('ZADD', KEYS[1], score, user)
  redis.call('HSET', KEYS[2], user, ARGV[10] .. '|0|0')
  for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], keep) end
  return standing(admitted + advance())
elseif op == 'leave' then
  local left = redis.call('HDEL', KEYS[2], user)
  redis.call('ZREM', KEYS[1], user)
  redis.call('ZREM', KEYS[3], user)
  local admitted = advance()
  return {left, '', 0, 0, 0, now, admitted}
elseif op == 'advance' then
  local admitted = advance()
  return {0, '', 0, 0, 0, now, admitted}
end
return standing(advance())
