-- One request's checks, decided atomically (contract §7): every check is peeked at first;
-- only when every check that is not a shadow has room is the request recorded, in each check
-- with room. A request blocked by any check is recorded in none. Time comes from this
-- server's clock (TIME), so gateway nodes with skewed clocks agree.
--
-- The algorithm files in lua/ are prepended to this one (src/limiter/backend/redis.rs).
--
-- KEYS[i]   ratelimit:<counter key>, one per check
-- ARGV[1]   flags: 1 = decide and record (else look only, writing nothing, for /api/explain);
--           2 = also work out reset_ms for requests with room (the IETF fields need it)
-- ARGV[2]   a member id unique across every gateway node (node instance + sequence)
-- ARGV[3..] four values per key: algorithm id (1 sliding_log, 2 gcra, 3 sliding_window),
--           limit (> 0), window_ms (> 0), shadow (1|0)
--
-- Returns five integers per key, in order: room (1|0), count, remaining, retry_after_ms,
-- reset_ms (see src/limiter/algo/mod.rs, Decision; a sliding log's reset_ms is 0 for a
-- request with room unless asked for).

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local flags = tonumber(ARGV[1])
local record = flags % 2 == 1
local want_reset = flags >= 2

local peeks = {sliding_log_peek, gcra_peek, sliding_window_peek}
local records = {sliding_log_record, gcra_record, sliding_window_record}

local function algorithm(i)
  local id = tonumber(ARGV[3 + (i - 1) * 4])
  if not peeks[id] then
    error('unknown algorithm id ' .. tostring(ARGV[3 + (i - 1) * 4]))
  end
  return id
end

-- One check, the common case: no bookkeeping.
if #KEYS == 1 then
  local id, key = algorithm(1), KEYS[1]
  local limit, window = tonumber(ARGV[4]), tonumber(ARGV[5])
  local room, count, remaining, retry, reset, state =
    peeks[id](key, now, now_us, limit, window, not record, want_reset)
  if room == 1 and record then
    count, remaining, reset = records[id](key, now, now_us, limit, window, ARGV[2], count,
      remaining, reset, state)
  end
  return {room, count, remaining, retry, reset}
end

local reply, states, blocked = {}, {}, false
for i = 1, #KEYS do
  local at, b = 3 + (i - 1) * 4, (i - 1) * 5
  local id = algorithm(i)
  reply[b + 1], reply[b + 2], reply[b + 3], reply[b + 4], reply[b + 5], states[i] =
    peeks[id](KEYS[i], now, now_us, tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]),
      not record, want_reset)
  if reply[b + 1] == 0 and ARGV[at + 3] ~= '1' then
    blocked = true
  end
end
if record and not blocked then
  for i = 1, #KEYS do
    local at, b = 3 + (i - 1) * 4, (i - 1) * 5
    if reply[b + 1] == 1 then
      reply[b + 2], reply[b + 3], reply[b + 5] = records[algorithm(i)](KEYS[i], now, now_us,
        tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[2], reply[b + 2], reply[b + 3],
        reply[b + 5], states[i])
    end
  end
end
return reply
