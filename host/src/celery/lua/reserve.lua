-- Reserve up to ARGV[1] messages in one atomic step: pop each from its
-- list and record it in kombu's ack emulation (HSET unacked, ZADD
-- unacked_index), so no consumer can die between the pop and the record
-- (kombu's BRPOP -> ZADD/HSET window).
--
-- KEYS[1] unacked, KEYS[2] unacked_index, KEYS[3..] the lists, in pop order
-- ARGV[1] how many at most, ARGV[2] the score (client time, as kombu)
-- ARGV[3 .. 2+#lists] the queue name of each list (the routing key when
--   a message carries none)
-- ARGV[3+#lists ..] spare delivery tags for messages without one
-- Returns a flat array: tag, raw message, list index (1-based) per
-- message; tag '' marks an element that is not a JSON object (it was
-- popped and is not recorded: nothing could ever restore or run it).
-- The tag, exchange and routing key are read without decoding the whole
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
    local tag, ex, rk = one(raw, 'delivery_tag'), one(raw, 'exchange'), one(raw, 'routing_key')
    if tag and ex and rk then return true, tag, ex, rk end
  end
  local ok, msg = pcall(cjson.decode, raw)
  if not ok or type(msg) ~= 'table' then return false end
  local tag, ex, rk = nil, nil, nil
  local p = msg['properties']
  if type(p) == 'table' then
    if type(p['delivery_tag']) == 'string' then tag = p['delivery_tag'] end
    local di = p['delivery_info']
    if type(di) == 'table' then
      if type(di['exchange']) == 'string' then ex = di['exchange'] end
      if type(di['routing_key']) == 'string' then rk = di['routing_key'] end
    end
  end
  return true, tag, ex, rk
end

local max = tonumber(ARGV[1])
local now = ARGV[2]
local nlists = #KEYS - 2
local spare = 3 + nlists
local out = {}
local n = 0
for i = 1, nlists do
  while n < max do
    local raw = redis.call('RPOP', KEYS[2 + i])
    if not raw then break end
    n = n + 1
    local ok, tag, ex, rk = fields(raw)
    if ok then
      if not tag or tag == '' then
        tag = ARGV[spare] or ('billiard-' .. now .. '-' .. n)
        spare = spare + 1
      end
      ex = ex or ''
      rk = rk or ARGV[2 + i]
      redis.call('HSET', KEYS[1], tag,
        '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
      redis.call('ZADD', KEYS[2], now, tag)
    else
      tag = ''
    end
    out[#out + 1] = tag
    out[#out + 1] = raw
    out[#out + 1] = i
  end
end
return out
