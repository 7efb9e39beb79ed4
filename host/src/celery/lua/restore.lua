-- Return one unacked message to its queue (kombu's restore_by_tag) if it
-- is still what the caller read and, for a sweep, still stale; or forget
-- a lapsed lease whose entry someone else (kombu's sweeper) already took.
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] billiard-host:leases,
-- KEYS[4] billiard-host:restored, KEYS[5] the list to push onto,
-- KEYS[6] billiard-host:running
-- ARGV[1] the delivery tag
-- ARGV[2] restore only if its score is <= this ('' = whatever the score)
-- ARGV[3] the unacked entry the caller read ('' = it had none: only
--   clean up the lease)
-- ARGV[4] the message to push (the entry's payload, marked redelivered)
-- ARGV[5] 'R' = RPUSH (next to be consumed, as kombu), 'L' = LPUSH
-- ARGV[6] '1' = a sweep: a message that was running (it has a mark in
--   KEYS[6]) counts a death of its task, '0' = a requeue by its own host
-- ARGV[7] the prefix of the per-task death lists (billiard-host:deaths:)
-- Returns 1 if restored, 2 if only a lapsed lease was forgotten, 0 if
-- nothing was done.
--
-- Every restore (and every lease whose entry vanished) leaves a tombstone
-- in billiard-host:restored (tag -> when; kept a day): the host that held
-- the reservation and finishes it late learns that its message really was
-- put back on a queue (finish.lua), rather than guessing it from a
-- missing entry (an ack whose reply was lost, a FLUSHALL).
pcall(redis.replicate_commands)

-- The message's "running here" mark (running.lua: "ttl\ntask id\nwho,
-- since when") goes with its reservation. A sweep finding one restores a
-- message whose task was running when its host stopped renewing the lease
-- (the host was killed, e.g. by the OOM killer, or stopped): that is a
-- death of the task, pushed onto its death list, which the next consumer
-- reads before running it (the poison-message cap, redelivery.rs).
local function forget_run()
  -- pcall throughout: this runs between taking the entry and pushing the
  -- message back, so a key of another type (the marks, a death list) must
  -- cost the count, never the message.
  local mark = redis.pcall('HGET', KEYS[6], ARGV[1])
  if type(mark) ~= 'string' then return end
  redis.pcall('HDEL', KEYS[6], ARGV[1])
  if ARGV[6] ~= '1' then return end
  local ttl, id, who = string.match(mark, '^(%d+)\n([^\n]+)\n(.*)$')
  if not id then return end
  local key = ARGV[7] .. id
  redis.pcall('LPUSH', key, who .. ', stopped renewing its lease while running it ' ..
    '(the host was killed, stopped, or cut off from Redis); a sweeper restored its message')
  redis.pcall('EXPIRE', key, math.max(1, tonumber(ttl) or 86400))
end

local function tombstone()
  local t = redis.call('TIME')
  local now = tonumber(t[1])
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 86400)
end
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
    forget_run()
    tombstone()
    return 2
  end
  return 0
end
if ARGV[3] == '' or cur ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[5] == 'L' then
  redis.call('LPUSH', KEYS[5], ARGV[4])
else
  redis.call('RPUSH', KEYS[5], ARGV[4])
end
forget_run()
tombstone()
return 1
