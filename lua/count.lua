-- How many requests one counter holds now, for the admin API (contract §5: `count` excludes
-- expired entries), as the algorithm's own estimate. The algorithm files in lua/ are
-- prepended to this one.
--
-- KEYS[1]  ratelimit:<counter key>
-- ARGV[1]  algorithm id (1 sliding_log, 2 gcra, 3 sliding_window), from the key's rule
-- ARGV[2]  limit, ARGV[3] window_ms: the rule's, as configured now

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local key, id = KEYS[1], ARGV[1]

if id == '1' then
  -- A log knows its own window, which /check may have set: the check sets the key's expiry
  -- to `window` after its newest entry, so newest - PTTL = now - window is the cut-off.
  local newest = redis.pcall('ZRANGE', key, -1, -1, 'WITHSCORES')
  if type(newest) ~= 'table' or newest.err or #newest == 0 then
    return 0
  end
  local pttl = redis.call('PTTL', key)
  if pttl < 0 then
    -- No expiry: not written by the check script; count what is there.
    return redis.call('ZCARD', key)
  end
  local cutoff = tonumber(newest[2]) - pttl
  return redis.call('ZCOUNT', key, '(' .. cutoff, '+inf')
end

local peek
if id == '3' then
  peek = sliding_window()
else
  peek = gcra()
end
local _, count = peek(key, now, now_us, tonumber(ARGV[2]), tonumber(ARGV[3]), true, false)
return count
