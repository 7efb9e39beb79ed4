-- Store a task's custom state (PROGRESS) as Celery's update_state does:
-- SET(EX) the result key and PUBLISH it on the channel of the same name;
-- but never over a finished result (SUCCESS, FAILURE, REVOKED): a report
-- that lost the race with its task's end is dropped.
--
-- KEYS[1] the result key; ARGV[1] time to live in seconds (0 = forever),
-- ARGV[2] the meta JSON. Returns 1 if stored.
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'string' then
  local ok, m = pcall(cjson.decode, cur)
  if ok and type(m) == 'table' then
    local s = m['status']
    if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then
      return 0
    end
  end
end
local ttl = tonumber(ARGV[1]) or 0
if ttl > 0 then
  redis.call('SETEX', KEYS[1], ttl, ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 1
