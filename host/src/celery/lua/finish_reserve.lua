-- The finish of a batch and the reserve for the pool slots its successes
-- freed, in one script call and one round trip (issue 26: at prefetch x1
-- a task costs one call, not a finish call plus a reserve call).
--
-- The script Redis runs is `finish.lua` and `reserve.lua`, each wrapped
-- as a function of its own KEYS and ARGV (transport/redis.rs puts them
-- together), then this part, which splits the call's KEYS and ARGV:
--
-- KEYS[1 .. ARGV[1]] finish.lua's keys, the rest reserve.lua's
-- ARGV[1] how many keys are finish.lua's, ARGV[2] how many of the ARGV
--   after these two are finish.lua's; the rest are reserve.lua's
-- Returns {finish.lua's reply, reserve.lua's reply}, or, when the reserve
-- failed (a queue key of another type, ...), {finish.lua's reply, {}, its
-- error's words}: the finish comes first and stands either way.
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local fk, fa, rk, ra = {}, {}, {}, {}
for i = 1, nk do fk[i] = KEYS[i] end
for i = nk + 1, #KEYS do rk[i - nk] = KEYS[i] end
for i = 1, na do fa[i] = ARGV[2 + i] end
for i = 3 + na, #ARGV do ra[i - 2 - na] = ARGV[i] end
local done = finish(fk, fa)
local ok, got = pcall(reserve, rk, ra)
if ok and type(got) == 'table' and not got['err'] then return {done, got} end
-- An error nested in the reply would fail the whole reply on the client:
-- its words go back as a third element instead.
if type(got) == 'table' and got['err'] then got = got['err'] end
return {done, {}, tostring(got)}
