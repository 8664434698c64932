-- One request's checks, decided atomically (contract §7): every check is peeked at first;
-- only when every check that is not a shadow has room is the request recorded, in each check
-- with room. A request blocked by any check is recorded in none. Time comes from this
-- server's clock (TIME), so gateway nodes with skewed clocks agree.
--
-- The algorithm files in lua/ are prepended to this one (src/limiter/backend/redis.rs).
--
-- KEYS[i]   ratelimit:<counter key>, one per check
-- ARGV[1]   1: decide and record; 0: look only (/api/explain), writing nothing
-- ARGV[2]   a member id unique across every gateway node (node instance + sequence)
-- ARGV[3..] four values per key: algorithm id, limit (> 0), window_ms (> 0), shadow (1|0)
--
-- Returns five integers per key, in order: room (1|0), count, remaining, retry_after_ms,
-- reset_ms (see src/limiter/algo/mod.rs, Decision).

local algorithms = {[1] = sliding_log}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local record = ARGV[1] == '1'

local checks, blocked = {}, false
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local algorithm = algorithms[tonumber(ARGV[at])]
  if algorithm == nil then
    return redis.error_reply('unknown algorithm id ' .. tostring(ARGV[at]))
  end
  local c = {
    algorithm = algorithm,
    limit = tonumber(ARGV[at + 1]),
    window = tonumber(ARGV[at + 2]),
    shadow = ARGV[at + 3] == '1',
  }
  c.result = algorithm.peek(key, now, c.limit, c.window, not record)
  if c.result[1] == 0 and not c.shadow then
    blocked = true
  end
  checks[i] = c
end

if record and not blocked then
  for i, key in ipairs(KEYS) do
    local c = checks[i]
    if c.result[1] == 1 then
      c.algorithm.record(key, now, c.limit, c.window, ARGV[2], c.result)
    end
  end
end

local reply = {}
for i = 1, #KEYS do
  for j = 1, 5 do
    reply[#reply + 1] = checks[i].result[j]
  end
end
return reply
