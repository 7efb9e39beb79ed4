-- Release a lock taken with SET key token NX EX (redis-py's Lock, which
-- kombu's unacked_mutex uses) only if this token still holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
