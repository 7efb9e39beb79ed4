-- Finish a batch of messages, each in one atomic step: store its result
-- (unless a SUCCESS is already stored: Celery never overwrites one) and
-- PUBLISH it on the channel of the same name, send its follow-up messages
-- (chain, link, link_error), and ack it (ZREM unacked_index, HDEL unacked).
--
-- KEYS[1] unacked, KEYS[2] unacked_index, then per message: its result key,
--   then the list of each of its follow-ups
-- ARGV[1] the results' time to live in seconds (0 = forever), then per
--   message: its delivery tag ('' = nothing to ack), its result JSON
--   ('' = store nothing), the number of follow-ups k, then the k messages
-- Returns {stored, held} per message. Follow-ups are sent only by the
-- consumer that still holds the message: one that was restored to its
-- queue meanwhile runs again elsewhere, and that run sends them.
local ttl = tonumber(ARGV[1]) or 0
local out = {}
local a, k = 2, 3
while a <= #ARGV do
  local tag, result, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local key = KEYS[k]
  local holds = 1
  if tag ~= '' then
    holds = redis.call('HEXISTS', KEYS[1], tag)
  end
  local stored = 0
  if result ~= '' then
    -- pcall: a key of another type (not a result) is overwritten, and
    -- does not fail the whole batch.
    local cur = redis.pcall('GET', key)
    local keep = false
    if type(cur) == 'string' then
      local ok, m = pcall(cjson.decode, cur)
      keep = ok and type(m) == 'table' and m['status'] == 'SUCCESS'
    end
    if not keep then
      if ttl > 0 then
        redis.call('SETEX', key, ttl, result)
      else
        redis.call('SET', key, result)
      end
      redis.call('PUBLISH', key, result)
      stored = 1
    end
  end
  if holds == 1 then
    for i = 1, n do
      redis.call('LPUSH', KEYS[k + i], ARGV[a + 2 + i])
    end
  end
  if tag ~= '' then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('HDEL', KEYS[1], tag)
  end
  out[#out + 1] = stored
  out[#out + 1] = holds
  a = a + 3 + n
  k = k + 1 + n
end
return out
