-- A fleet-wide rate limit for one task (`--global-rate-limit`): GCRA
-- without burst (Celery's token bucket of capacity 1, shared), on Redis's
-- clock (TIME), so the hosts' own clocks never matter.
--
-- The key holds one number: the theoretical arrival time (TAT, Unix
-- microseconds), the earliest start the next caller may be given. Each
-- granted call takes the slot max(now, TAT) and moves TAT one interval
-- past it, in one atomic step: two hosts never get the same slot, so the
-- starts of the whole fleet are at least one interval apart. A slot is
-- handed out at most `horizon` ahead of now; further ahead the caller is
-- told when to ask again (no slot taken), so a host that stops with slots
-- in hand wastes at most a horizon of the fleet's time.
--
-- KEYS[1] billiard-host:rate:<task>
-- ARGV[1] the caller's interval between starts, whole microseconds (>= 1)
-- ARGV[2] the horizon, whole microseconds (>= 0)
-- Returns {1, wait}: start in `wait` microseconds (the slot is taken);
--         {0, wait}: no slot yet, ask again in `wait` microseconds.
--
-- Hosts configured with different rates for the same task share the one
-- TAT: each grant moves it by the granting caller's own interval, so the
-- state stays one valid time whatever the mix (nothing else is stored).
pcall(redis.replicate_commands)
local interval = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
if not interval or interval ~= interval or interval < 1 or interval > 315360000000000
  or not horizon or horizon ~= horizon or horizon < 0 or horizon > 315360000000000 then
  return redis.error_reply('ERR billiard-host rate.lua: bad interval or horizon')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '')
-- Not a time within ten years of now (someone else's value, a clock
-- jumped back): start afresh rather than wait for ever on it.
if not tat or tat ~= tat or tat < now or tat > now + 315360000000000 then
  tat = now
end
local ahead = tat - now
if ahead > horizon then
  return {0, ahead - horizon}
end
local nxt = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', nxt),
  'PX', math.floor((nxt - now) / 1000) + 1000)
return {1, ahead}
