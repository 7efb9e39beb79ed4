-- Celery 5.5/5.6's chord part return (celery v5.6.3
-- celery/backends/redis.py:492-520), which Python runs as one MULTI/EXEC
-- pipeline, as one script (atomic the same way): add the part's entry to
-- .j (ZADD with its group_index as score, or RPUSH when the fleet has
-- result_chord_ordered=False), count .j, read .t and .s, and refresh the
-- expiry of .j .t .s with result_expires. No .d dedup, no .c claim: a
-- 5.6 fleet dedups only byte-identical entries and may fire twice.
--
-- KEYS[1] .j, KEYS[2] .t, KEYS[3] .s
-- ARGV[1] the encoded entry, ARGV[2] '1' ordered (ZSET) / '0' (LIST),
-- ARGV[3] the score (group_index or '+inf'), ARGV[4] result_expires in
-- seconds (0: none)
-- Returns {readycount, totaldiff, size}
local jkey, tkey, skey = KEYS[1], KEYS[2], KEYS[3]
local value, ordered, score = ARGV[1], ARGV[2], ARGV[3]
local expires = tonumber(ARGV[4]) or 0
local readycount
if ordered == '1' then
    redis.call('ZADD', jkey, score, value)
    readycount = redis.call('ZCOUNT', jkey, '-inf', '+inf')
else
    redis.call('RPUSH', jkey, value)
    readycount = redis.call('LLEN', jkey)
end
local totaldiff = redis.call('GET', tkey)
local size = redis.call('GET', skey)
if expires > 0 then
    redis.call('EXPIRE', jkey, expires)
    redis.call('EXPIRE', tkey, expires)
    redis.call('EXPIRE', skey, expires)
end
return {readycount, totaldiff, size}
