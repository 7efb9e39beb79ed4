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
    local ok, msg = pcall(cjson.decode, raw)
    local tag = ''
    if ok and type(msg) == 'table' then
      local ex, rk = '', ARGV[2 + i]
      local p = msg['properties']
      if type(p) == 'table' then
        if type(p['delivery_tag']) == 'string' then tag = p['delivery_tag'] end
        local di = p['delivery_info']
        if type(di) == 'table' then
          if type(di['exchange']) == 'string' then ex = di['exchange'] end
          if type(di['routing_key']) == 'string' then rk = di['routing_key'] end
        end
      end
      if tag == '' then
        tag = ARGV[spare] or ('billiard-' .. now .. '-' .. n)
        spare = spare + 1
      end
      redis.call('HSET', KEYS[1], tag,
        '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
      redis.call('ZADD', KEYS[2], now, tag)
    end
    out[#out + 1] = tag
    out[#out + 1] = raw
    out[#out + 1] = i
  end
end
return out
