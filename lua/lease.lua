-- One counter key's lease (contract §11): a node takes up to `wanted` slots of the counter in
-- one call and decides from them by itself until they are used or the lease ends; it gives
-- back what it did not use. Time comes from this server's clock, as in lua/check.lua. The
-- algorithm files in lua/ are prepended to this one (with ALGORITHMS, by id); each counts a
-- lease's slots so that the limit holds however and whenever the node spends them (see their
-- `take`).
--
-- KEYS[1]   ratelimit:<counter key>
-- ARGV[1]   'take' or 'give'
-- ARGV[2]   algorithm id (1 sliding_log, 2 gcra, 3 sliding_window); ARGV[3] limit (> 0);
--           ARGV[4] window_ms (> 0)
-- take:     ARGV[5] slots wanted (> 0), ARGV[6] lease_ms (> 0), ARGV[7] a lease id unique
--           across every gateway node, ARGV[8] the fewest slots worth taking (the units of
--           the request asking; none are taken when fewer are left)
--           -> granted, count (before), remaining (after), retry_after_ms (when none was
--              granted), lease_end_ms (this server's clock), mark (for give), and the ms
--              left until the lease ends
-- give:     ARGV[5] the lease id, ARGV[6] slots granted, ARGV[7] slots unused, ARGV[8] mark,
--           ARGV[9] lease_end_ms, as take returned them
--           -> slots given back (GCRA: none once a later lease has built on this one)

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local key, op = KEYS[1], ARGV[1]
local loaders = ALGORITHMS
local load = loaders[tonumber(ARGV[2])]
if not load then
  return redis.error_reply('unknown algorithm id ' .. tostring(ARGV[2]))
end
local limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local peek, _, _, take, give = load()

if op == 'take' then
  local least = tonumber(ARGV[8]) or 1
  local room, count, remaining, retry, _, state = peek(key, now, now_us, limit, window, false,
    false, least)
  if room == 0 then
    return {0, count, 0, retry, 0, 0, 0}
  end
  local granted, ends, mark = take(key, now, now_us, limit, window, tonumber(ARGV[6]), ARGV[7],
    tonumber(ARGV[5]), remaining, state)
  return {granted, count, remaining - granted, 0, ends, mark, ends - now}
elseif op == 'give' then
  return {give(key, now, now_us, limit, window, ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]),
    tonumber(ARGV[8]), tonumber(ARGV[9]))}
end
return redis.error_reply('unknown operation ' .. tostring(op))
