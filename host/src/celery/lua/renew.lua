-- Renew this host's leases: the score of each tag, in unacked_index and in
-- billiard-host:leases, becomes the lease's new end (now + the lease, on
-- Redis's clock, whole seconds rounded up). ZADD XX: a tag acked or
-- restored meanwhile is not re-added.
--
-- KEYS[1] unacked_index, KEYS[2] billiard-host:leases
-- ARGV[1] the lease in seconds, ARGV[2..] the tags
-- Returns how many leases were renewed.
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local until_ = math.ceil(tonumber(t[1]) + tonumber(t[2]) / 1000000 + (tonumber(ARGV[1]) or 0))
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', until_, ARGV[i])
  redis.call('ZADD', KEYS[2], 'XX', until_, ARGV[i])
end
return n
