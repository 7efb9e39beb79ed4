-- Finish a batch of messages in one atomic step: store each result
-- (unless a SUCCESS is already stored: Celery never overwrites one) and
-- PUBLISH it on the channel of the same name, send its follow-up messages
-- (chain, link, link_error), and ack it (HDEL unacked, ZREM unacked_index,
-- ZREM the lease; the last two, and the running marks, in one command per
-- key for the batch).
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] billiard-host:leases,
--   KEYS[4] billiard-host:restored, KEYS[5] billiard-host:running (the
--   message's "running here" mark is cleared with its ack: see
--   running.lua), then per message: its result key, then the list of each
--   of its follow-ups
-- ARGV[1] the results' time to live in whole seconds (0 = forever;
--   checked by the host: at most 10 years, which SETEX accepts)
-- ARGV[2] '1' when this call repeats one whose reply was lost (it may have
--   been applied), else '0'
-- then per message: its delivery tag ('' = nothing to ack), its result
--   JSON ('' = store nothing), the number of follow-ups k, the k messages
-- Returns {stored, held, unsent} per message:
--   stored  1 if the result was written
--   held    1 the message was still this reservation's: acked, follow-ups
--             sent (also for tag '')
--           2 it had been put back on a queue by a sweeper (a tombstone or
--             our lease is left): it may run again, and the run that holds
--             it sends the follow-ups; nothing is sent here
--           3 it is gone without a trace (a FLUSHALL, a DEL): nothing can
--             run it again, so the follow-ups are sent (a chain goes on)
--           4 it is gone because the repeated call (ARGV[2]) already
--             finished it: the stored result is this one, or there is none
--             to compare; nothing is sent twice
--   unsent  follow-ups Redis refused (a queue key that is not a list)
local ttl = tonumber(ARGV[1]) or 0
local repeated = ARGV[2] == '1'
local out = {}
-- Tags acked in the common case (still this reservation's): their entry,
-- index, lease and mark go in one command each for the whole batch, after
-- the results (the script is one atomic step, so that is the same as per
-- message; and the first write stays a result's SETEX, which Redis refuses
-- when out of memory before anything was changed).
local acked = {}

-- One command per key for a whole list of members, in chunks Lua's unpack
-- takes; pcall'ed by the caller where a key of another type must not fail
-- the batch.
local function bulk(cmd, key, items)
  local i = 1
  while i <= #items do
    local args = {cmd, key}
    local last = math.min(#items, i + 999)
    for j = i, last do args[#args + 1] = items[j] end
    redis.call(unpack(args))
    i = last + 1
  end
end

local a, k = 3, 6
while a <= #ARGV do
  local tag, result, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local key = KEYS[k]
  local held = 1
  if tag ~= '' then
    if redis.call('HEXISTS', KEYS[1], tag) == 1 then
      held = 1
      acked[#acked + 1] = tag
    else
      if redis.call('ZSCORE', KEYS[4], tag) or redis.call('ZSCORE', KEYS[3], tag) then
        held = 2
      else
        held = 3
      end
      redis.call('ZREM', KEYS[2], tag)
      redis.call('ZREM', KEYS[3], tag)
      redis.pcall('HDEL', KEYS[5], tag)
    end
  end
  local stored = 0
  local same = false
  if result ~= '' then
    -- pcall: a key of another type (not a result) is overwritten, and
    -- does not fail the whole batch. A stored SUCCESS is never replaced
    -- (only a value that says SUCCESS at all is decoded to check).
    local cur = redis.pcall('GET', key)
    local keep = false
    if type(cur) == 'string' then
      same = cur == result
      if string.find(cur, 'SUCCESS', 1, true) then
        local ok, m = pcall(cjson.decode, cur)
        keep = ok and type(m) == 'table' and m['status'] == 'SUCCESS'
      end
    end
    if not keep then
      -- The first write of the script: where Redis refuses one when out
      -- of memory, before anything is changed.
      if ttl > 0 then
        -- ARGV[1] as it came: a Lua number would be formatted again.
        redis.call('SETEX', key, ARGV[1], result)
      else
        redis.call('SET', key, result)
      end
      redis.call('PUBLISH', key, result)
      stored = 1
    end
  end
  if held == 3 and repeated and (same or result == '') then
    held = 4
  end
  local unsent = 0
  if held == 1 or held == 3 then
    for i = 1, n do
      -- pcall: one follow-up Redis refuses (its list key holds another
      -- type) costs that follow-up, not the batch.
      local r = redis.pcall('LPUSH', KEYS[k + i], ARGV[a + 2 + i])
      if type(r) == 'table' and r['err'] then unsent = unsent + 1 end
    end
  end
  out[#out + 1] = stored
  out[#out + 1] = held
  out[#out + 1] = unsent
  a = a + 3 + n
  k = k + 1 + n
end
if #acked > 0 then
  bulk('HDEL', KEYS[1], acked)
  bulk('ZREM', KEYS[2], acked)
  bulk('ZREM', KEYS[3], acked)
  -- pcall: a running-marks key of another type costs the marks, not the
  -- finish.
  pcall(bulk, 'HDEL', KEYS[5], acked)
end
return out
