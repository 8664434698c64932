-- Takes back what lua/check.lua recorded for a request that was refused after all: on Redis
-- Cluster a request's keys may live on several slots, each decided by its own script call;
-- when one slot's rules refuse the request, the others' records are taken back right after,
-- so the request ends up recorded in none (contract §7). Each slot's call enforced its own
-- limits atomically, so no limit is ever exceeded meanwhile; the price is that a request
-- racing this one may be refused by a record about to be taken back. So that no node goes
-- on remembering such a key as full, each key taken back is published on the resets
-- channel, which makes every node forget what it remembered about it.
--
-- The algorithm files in lua/ are prepended to this one, with ALGORITHMS (by id).
--
-- KEYS[i]   ratelimit:<counter key>, the keys whose checks recorded the request
-- ARGV[1]   the member id the request was recorded under
-- ARGV[2]   the resets channel
-- ARGV[3]   the counter key prefix ("ratelimit:"), left out of what is published
-- ARGV[4..] five values per key: algorithm id, limit, window_ms, the mark check.lua
--           returned for it, and the units the request was recorded with

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local loaders = ALGORITHMS

local prefix = #ARGV[3]
for i = 1, #KEYS do
  local at = 4 + (i - 1) * 5
  local loader = loaders[tonumber(ARGV[at])]
  if loader then
    local _, _, release = loader()
    release(KEYS[i], now, now_us, tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[1],
      tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4]))
    redis.call('PUBLISH', ARGV[2], string.sub(KEYS[i], prefix + 1))
  end
end
return #KEYS
