-- Mark messages as running on this host: their task started in the pool.
-- A sweep that later restores a marked message (its host stopped renewing
-- the lease while the task ran: killed, e.g. by the OOM killer, stopped,
-- cut off from Redis) counts a death of the task (restore.lua); the mark
-- goes with the ack (finish.lua) or the restore.
--
-- KEYS[1] billiard-host:leases, KEYS[2] billiard-host:running
-- ARGV pairs: delivery tag, mark ("ttl\ntask id\nwho, since when"; ''
--   unmarks: a message the reserve marked that the host holds instead of
--   running it, an eta message)
-- Returns how many were marked. A tag without a lease is finished or
-- restored already (the marks travel on another connection than the
-- finish): it is not marked, so no mark outlives its reservation.
local n = 0
for i = 1, #ARGV - 1, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  elseif redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
