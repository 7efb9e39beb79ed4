-- Copied verbatim from Celery 5.7.0 celery/backends/redis.py (CHORD_CLEANUP_LUA); do not
-- edit: Python 5.7 workers run the same script on the same keys.
local ckey = KEYS[1]
local jkey = KEYS[2]
local tkey = KEYS[3]
local skey = KEYS[4]
local dkey = KEYS[5]
local token = ARGV[1]
local done_expires = tonumber(ARGV[2])

if redis.call('GET', ckey) == token then
    redis.call('DEL', jkey, tkey, skey, dkey)
    if done_expires and done_expires > 0 then
        redis.call('SET', ckey, 'done', 'EX', done_expires)
    end
    return 1
end
return 0
