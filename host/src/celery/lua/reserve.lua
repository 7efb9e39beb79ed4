-- Reserve up to ARGV[1] messages in one atomic step: pop each from its
-- list and record it in kombu's ack emulation (HSET unacked, ZADD
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
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3] billiard-host:leases,
--   KEYS[4..] the lists, in pop order
-- ARGV[1] how many at most, ARGV[2] the lease in seconds
-- ARGV[3 .. 2+#lists] the queue name of each list (the routing key when
--   a message carries none)
-- ARGV[3+#lists ..] fresh delivery tags, one per message
-- Returns a flat array: tag, raw message, list index (1-based) per
-- message; tag '' marks an element that is not a JSON object (it was
-- popped and is not recorded: nothing could ever restore or run it).
-- The exchange and routing key are read without decoding the whole
-- envelope when each key occurs exactly once with a plain string value
-- (kombu's envelopes: the body is base64, so it holds no quotes); anything
-- else is decoded with cjson.
local function one(raw, key)
  local quoted = '"' .. key .. '"'
  local s1, e1 = string.find(raw, quoted, 1, true)
  if not s1 or string.find(raw, quoted, e1 + 1, true) then return nil end
  local s2, _, v = string.find(raw, '^%s*:%s*"([^"\\]*)"', e1 + 1)
  if not s2 then return nil end
  return v
end

local function fields(raw)
  if string.sub(raw, 1, 1) == '{' and string.sub(raw, -1) == '}' then
    local ex, rk = one(raw, 'exchange'), one(raw, 'routing_key')
    if ex and rk then return true, ex, rk end
  end
  local ok, msg = pcall(cjson.decode, raw)
  if not ok or type(msg) ~= 'table' then return false end
  local ex, rk = nil, nil
  local p = msg['properties']
  if type(p) == 'table' then
    local di = p['delivery_info']
    if type(di) == 'table' then
      if type(di['exchange']) == 'string' then ex = di['exchange'] end
      if type(di['routing_key']) == 'string' then rk = di['routing_key'] end
    end
  end
  return true, ex, rk
end

-- TIME before writes: Redis before 5 replicates whole scripts and refuses
-- a write after a non-deterministic command unless told to replicate
-- effects (a no-op since Redis 5, the only mode since 7).
pcall(redis.replicate_commands)
local max = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = math.ceil(tonumber(t[1]) + tonumber(t[2]) / 1000000 + (tonumber(ARGV[2]) or 0))
local nlists = #KEYS - 3
local spare = 3 + nlists
local out = {}
local n = 0
for i = 1, nlists do
  while n < max do
    local raw = redis.call('RPOP', KEYS[3 + i])
    if not raw then break end
    n = n + 1
    local ok, ex, rk = fields(raw)
    local tag = ''
    if ok then
      tag = ARGV[spare] or ('billiard-' .. now .. '-' .. n)
      spare = spare + 1
      ex = ex or ''
      rk = rk or ARGV[2 + i]
      redis.call('HSET', KEYS[1], tag,
        '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
      redis.call('ZADD', KEYS[2], now, tag)
      redis.call('ZADD', KEYS[3], now, tag)
    end
    out[#out + 1] = tag
    out[#out + 1] = raw
    out[#out + 1] = i
  end
end
return out
