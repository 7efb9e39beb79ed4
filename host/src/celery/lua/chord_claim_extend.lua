-- Copied verbatim from Celery 5.7.0 celery/backends/redis.py (CHORD_CLAIM_EXTEND_LUA); do not
-- edit: Python 5.7 workers run the same script on the same keys.
local ckey, skey = KEYS[1], KEYS[2]
local token = ARGV[1]
local expires = tonumber(ARGV[2])
if redis.call('GET', ckey) == token then
    return redis.call('EXPIRE', ckey, expires)
end
if not redis.call('GET', ckey) and redis.call('EXISTS', skey) == 1 then
    return redis.call('SET', ckey, token, 'EX', expires, 'NX') and 1 or 0
end
return 0
