-- Settles recorded requests (contract §13): each was recorded by lua/check.lua with a
-- reservation of `reserved` units, and its response has told that it used `actual`; the
-- difference is given back or charged in its record (found by the mark check.lua returned),
-- by the algorithm's own settle step. A charge may take a key past its limit: the units were
-- used. Nothing is settled once the record has left the window (or the key was reset).
--
-- A give-back may make room for a request some node remembers refused (src/limiter/backend/
-- redis/blocked.rs). Such a refusal needs fewer than `max_cost` units left: when a give-back
-- leaves that possible, the key is published on the resets channel, so every node forgets
-- what it remembered about it; under a key with room to spare, nothing is published.
--
-- The algorithm files in lua/ are prepended to this one, with ALGORITHMS (by id).
--
-- KEYS[i]   ratelimit:<counter key>
-- ARGV[1]   the resets channel
-- ARGV[2]   the counter key prefix ("ratelimit:"), left out of what is published
-- ARGV[3]   the settling node's instance id: with the mark, it names a concurrency slot
--           (lua/concurrency.lua, where settling at 0 frees the slot and at 1 renews it)
-- ARGV[4..] seven values per key: algorithm id, limit, window_ms, mark, reserved, actual,
--           max_cost
--
-- Returns one integer per key: the units given back (negative: charged).

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local loaders = ALGORITHMS
local prefix = #ARGV[2]

local out = {}
for i = 1, #KEYS do
  local at = 4 + (i - 1) * 7
  local load = loaders[tonumber(ARGV[at])]
  local given = 0
  if load then
    local peek, _, _, _, _, settle = load()
    local limit, window = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    given = settle(KEYS[i], now, now_us, limit, window, tonumber(ARGV[at + 3]),
      tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5]), ARGV[3])
    if given > 0 then
      -- Left before the give-back: at most what is left now less what came back.
      local _, count = peek(KEYS[i], now, now_us, limit, window, true, false, 1)
      if limit - count - given < tonumber(ARGV[at + 6]) then
        redis.call('PUBLISH', ARGV[1], string.sub(KEYS[i], prefix + 1))
      end
    end
  end
  out[i] = given
end
return out
