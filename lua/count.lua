-- How many requests one counter holds now, for the admin API (contract §5: `count` excludes
-- expired entries), as the algorithm's own estimate. The algorithm files in lua/ are
-- prepended to this one, with ALGORITHMS (by id).
--
-- KEYS[1]  ratelimit:<counter key>
-- ARGV[1]  algorithm id (1 sliding_log, 2 gcra, 3 sliding_window), from the key's rule
-- ARGV[2]  limit, ARGV[3] window_ms: the rule's, as configured now

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local key = KEYS[1]
local loaders = ALGORITHMS
local load = loaders[tonumber(ARGV[1])]
if not load then
  return redis.error_reply('unknown algorithm id ' .. tostring(ARGV[1]))
end
local peek, _, _, _, _, _, own_count = load()
if own_count then
  return own_count(key, now)
end
local _, count = peek(key, now, now_us, tonumber(ARGV[2]), tonumber(ARGV[3]), true, false, 1)
return count
