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
-- One ZADD per key for the whole batch (the host sends at most 512 tags a
-- call).
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = until_
  args[#args + 1] = ARGV[i]
end
if #args == 0 then return 0 end
local n = redis.call('ZADD', KEYS[1], 'XX', 'CH', unpack(args))
redis.call('ZADD', KEYS[2], 'XX', unpack(args))
return n
