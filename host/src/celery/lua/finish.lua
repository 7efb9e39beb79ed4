-- Finish one message in one atomic step: store its result (unless a
-- SUCCESS is already stored: Celery never overwrites one) and PUBLISH it on
-- the channel of the same name, send its follow-up messages (chain, link),
-- and ack it (ZREM unacked_index, HDEL unacked).
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] the result key
-- KEYS[4..] the lists of the follow-up messages
-- ARGV[1] the delivery tag ('' = nothing to ack)
-- ARGV[2] the result JSON ('' = store nothing)
-- ARGV[3] the result's time to live in seconds (0 = forever)
-- ARGV[4..] the follow-up messages, one per list in KEYS[4..]
-- Returns {stored, acked}. Follow-ups are sent only by the consumer that
-- still holds the message: one that was restored to the queue meanwhile
-- runs again elsewhere and that run sends them.
local holds = 1
if ARGV[1] ~= '' then
  holds = redis.call('HEXISTS', KEYS[1], ARGV[1])
end
local stored = 0
if ARGV[2] ~= '' then
  local cur = redis.call('GET', KEYS[3])
  local keep = false
  if cur then
    local ok, m = pcall(cjson.decode, cur)
    keep = ok and type(m) == 'table' and m['status'] == 'SUCCESS'
  end
  if not keep then
    local ttl = tonumber(ARGV[3]) or 0
    if ttl > 0 then
      redis.call('SETEX', KEYS[3], ttl, ARGV[2])
    else
      redis.call('SET', KEYS[3], ARGV[2])
    end
    redis.call('PUBLISH', KEYS[3], ARGV[2])
    stored = 1
  end
end
if holds == 1 then
  for i = 4, #KEYS do
    redis.call('LPUSH', KEYS[i], ARGV[i])
  end
end
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return {stored, holds}
