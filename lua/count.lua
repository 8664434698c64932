-- Live entries of one counter, for the admin API (contract §5: `count` excludes expired
-- entries), without knowing the window the key was checked with.
--
-- KEYS[1]  ratelimit:<key>
--
-- The check script sets the key's expiry to `window` after its newest entry, so
-- newest - PTTL = now - window: the cut-off below which entries have left the window.

local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #newest == 0 then
  return 0
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then
  -- No expiry: not written by the check script; count what is there.
  return redis.call('ZCARD', KEYS[1])
end
local cutoff = tonumber(newest[2]) - pttl
return redis.call('ZCOUNT', KEYS[1], '(' .. cutoff, '+inf')
