-- Reserve up to ARGV[1] messages in one atomic step: pop them from their
-- lists and record them in kombu's ack emulation (HSET unacked, ZADD
-- unacked_index), so no consumer can die between the pop and the record
-- (kombu's BRPOP -> ZADD/HSET window), and in this host's lease index.
--
-- Every reservation gets a fresh delivery tag (ARGV, one per message): a
-- tag names one reservation, never a message, so an envelope pushed twice
-- is two reservations, and a message restored and reserved again is never
-- mistaken for the first reservation by the host that made it.
--
-- The score is not the reservation time (kombu's) but the lease's end
-- (now + this host's visibility timeout, on Redis's clock: TIME, so the
-- hosts' own clocks never matter between billiard hosts; whole seconds
-- rounded up, integers being cheaper to compare): a sweeper, ours or kombu's,
-- restores an entry once `score < now - its visibility timeout`, so while
-- the host renews the lease (ZADD XX, every third of it) no sweeper
-- with any timeout sees it as stale. `billiard-host:leases` holds the same
-- tag -> score, so our sweeper tells leases from entries of consumers that
-- never renew (Python workers, whose score is their reservation time).
--
-- The first ARGV[3] messages reserved go to idle pool slots at once: they
-- are marked "running here" in the same step (running.lua's mark, saving
-- the host a call per task); the host unmarks one it holds instead (an
-- eta), and marks the others itself when they start.
--
-- Cost per call (issue 26): one LMPOP takes every message wanted from the
-- first non-empty list (another only when that list ran dry), and each
-- record is one multi-field HSET / ZADD for the whole batch, rather than a
-- pop per list and message and three writes per message.
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] billiard-host:leases,
--   KEYS[4] billiard-host:running, KEYS[5..] the lists, in pop order
-- ARGV[1] how many at most, ARGV[2] the lease in seconds,
-- ARGV[3] how many to mark running, ARGV[4] the marks' head ("ttl\n"),
-- ARGV[5] their tail ("\nwho, running it since when")
-- ARGV[6 .. 5+#lists] the queue name of each list
-- ARGV[6+#lists ..] fresh delivery tags, one per message
-- Returns a flat array: tag, raw message, list index (1-based), marked
-- (1/0) per message; tag '' marks an element that is not a JSON object (it
-- was popped and is not recorded: nothing could ever restore or run it).
--
-- The `unacked` entry is kombu's `[envelope, exchange, routing_key]` with
-- exchange '' and the routing key the queue it was popped from (issue 26:
-- the envelope's own routing fields are not parsed): kombu's restore and
-- ours look up '' as "the queue named by the routing key", so the message
-- goes back to the queue it came from (rather than to every queue its
-- exchange binds, which the message's own fields would have restored a
-- fanout or topic message to). The task id of a "running here" mark is
-- read without decoding the envelope when "id" occurs exactly once with a
-- plain string value (kombu's envelopes: the body is base64, so it holds
-- no quotes); otherwise the message is not marked here.
local function one(raw, key)
  local quoted = '"' .. key .. '"'
  local s1, e1 = string.find(raw, quoted, 1, true)
  if not s1 or string.find(raw, quoted, e1 + 1, true) then return nil end
  local s2, _, v = string.find(raw, '^%s*:%s*"([^"\\]*)"', e1 + 1)
  if not s2 then return nil end
  return v
end

-- A list element is recorded only when it is a JSON object (anything else
-- could never be restored or run): one that starts with '{' and ends with
-- '}' is taken as one unread (a kombu envelope always is; the host reads
-- it next and acks one it cannot read as a message); anything else is
-- decoded to know.
local function object(raw)
  if string.sub(raw, 1, 1) == '{' and string.sub(raw, -1) == '}' then return true end
  local ok, msg = pcall(cjson.decode, raw)
  return ok and type(msg) == 'table'
end

-- TIME before writes: Redis before 5 replicates whole scripts and refuses
-- a write after a non-deterministic command unless told to replicate
-- effects (a no-op since Redis 5, the only mode since 7).
pcall(redis.replicate_commands)
local max = tonumber(ARGV[1])
local tomark = tonumber(ARGV[3]) or 0
local t = redis.call('TIME')
local now = math.ceil(tonumber(t[1]) + tonumber(t[2]) / 1000000 + (tonumber(ARGV[2]) or 0))
-- As text once: Redis would format the number again for every score.
now = string.format('%d', now)
local nlists = #KEYS - 4
local spare = 6 + nlists
local lmpop = true

-- Pops up to c messages from the first non-empty list of lists i..nlists:
-- its index and the messages, or nil when all are empty. LMPOP (Redis 7);
-- RPOP one by one where Redis has no LMPOP.
local function pop(i, c)
  if lmpop then
    local args = {'LMPOP', nlists - i + 1}
    for j = i, nlists do args[#args + 1] = KEYS[4 + j] end
    args[#args + 1] = 'RIGHT'
    args[#args + 1] = 'COUNT'
    args[#args + 1] = c
    local r = redis.pcall(unpack(args))
    if type(r) == 'table' and r['err'] then
      lmpop = false
    elseif type(r) ~= 'table' then
      return nil
    else
      for j = i, nlists do
        if KEYS[4 + j] == r[1] then return j, r[2] end
      end
      return nil
    end
  end
  for j = i, nlists do
    local els = {}
    while #els < c do
      local raw = redis.pcall('RPOP', KEYS[4 + j])
      if type(raw) == 'table' and raw['err'] then
        -- A key of another type: what was popped is kept (and recorded
        -- below), the error goes back to the caller otherwise.
        if #els > 0 then return j, els end
        return nil, raw
      end
      if not raw then break end
      els[#els + 1] = raw
    end
    if #els > 0 then return j, els end
  end
  return nil
end

-- One command per key for the whole batch, in chunks Lua's unpack takes.
local function bulk(cmd, key, pre, items)
  local i = 1
  while i <= #items do
    local args = {cmd, key}
    for _, x in ipairs(pre) do args[#args + 1] = x end
    local last = math.min(#items, i + 999)
    for j = i, last do args[#args + 1] = items[j] end
    redis.call(unpack(args))
    i = last + 1
  end
end

local out = {}
local entries, scores, marks = {}, {}, {}
-- Per list: the end of its entries (exchange '', routing key its queue).
local tails = {}
local n = 0
local from = 1
while n < max and from <= nlists do
  local j, els = pop(from, max - n)
  if not j then
    -- Redis refused a pop (a queue key of another type): an error when
    -- nothing was taken yet; otherwise what was taken is recorded and
    -- handed out, and the next call meets the error first.
    if els and n == 0 then return els end
    break
  end
  for _, raw in ipairs(els) do
    n = n + 1
    local tag = ''
    local marked = 0
    if object(raw) then
      tag = ARGV[spare] or ('billiard-' .. now .. '-' .. n)
      spare = spare + 1
      if not tails[j] then tails[j] = ',"",' .. cjson.encode(ARGV[5 + j]) .. ']' end
      entries[#entries + 1] = tag
      entries[#entries + 1] = '[' .. raw .. tails[j]
      scores[#scores + 1] = now
      scores[#scores + 1] = tag
      if tomark > 0 then
        tomark = tomark - 1
        local id = one(raw, 'id')
        if id and id ~= '' and not string.find(id, '\n', 1, true) then
          marks[#marks + 1] = tag
          marks[#marks + 1] = ARGV[4] .. id .. ARGV[5]
          marked = 1
        end
      end
    end
    out[#out + 1] = tag
    out[#out + 1] = raw
    out[#out + 1] = j
    out[#out + 1] = marked
  end
  from = j + 1
end
bulk('HSET', KEYS[1], {}, entries)
bulk('ZADD', KEYS[2], {}, scores)
bulk('ZADD', KEYS[3], {}, scores)
if #marks > 0 then
  -- pcall: a running-marks key of another type costs the marks (the host
  -- then counts no death of these runs), never the reservation.
  local ok = pcall(bulk, 'HSET', KEYS[4], {}, marks)
  if not ok then
    for i = 4, #out, 4 do out[i] = 0 end
  end
end
return out
