-- Return one unacked message to its queue (kombu's restore_by_tag) if it
-- is still what the caller read and, for a sweep, still stale.
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] the list to push onto
-- ARGV[1] the delivery tag
-- ARGV[2] restore only if its score is <= this ('' = whatever the score)
-- ARGV[3] the unacked entry the caller read
-- ARGV[4] the message to push (the entry's payload, marked redelivered)
-- ARGV[5] 'R' = RPUSH (next to be consumed, as kombu), 'L' = LPUSH
-- Returns 1 if restored, 0 if not.
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if cur ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[5] == 'L' then
  redis.call('LPUSH', KEYS[3], ARGV[4])
else
  redis.call('RPUSH', KEYS[3], ARGV[4])
end
return 1
