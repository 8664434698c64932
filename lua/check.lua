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
-- ARGV[3..] four values per key: algorithm id, limit (> 0), window_ms (> 0), shadow (1|0)
--
-- Returns five integers per key, in order: room (1|0), count, remaining, retry_after_ms,
-- reset_ms (see src/limiter/algo/mod.rs, Decision; reset_ms is 0 when not asked for).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local flags = tonumber(ARGV[1])
local record = flags % 2 == 1
local want_reset = flags >= 2

local function peek(i)
  local at = 3 + (i - 1) * 4
  local id = ARGV[at]
  if id == '1' then
    return sliding_log_peek(KEYS[i], now, tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]),
      not record, want_reset)
  end
  error('unknown algorithm id ' .. tostring(id))
end

local function record_one(i, count, remaining, reset)
  local at = 3 + (i - 1) * 4
  return sliding_log_record(KEYS[i], now, tonumber(ARGV[at + 2]), ARGV[2], count, remaining,
    reset)
end

-- One check, the common case: no bookkeeping.
if #KEYS == 1 and ARGV[3] == '1' then
  local key, limit, window = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
  local room, count, remaining, retry, reset =
    sliding_log_peek(key, now, limit, window, not record, want_reset)
  if room == 1 and record then
    count, remaining, reset = sliding_log_record(key, now, window, ARGV[2], count, remaining,
      reset)
  end
  return {room, count, remaining, retry, reset}
end

local reply, blocked = {}, false
for i = 1, #KEYS do
  local b = (i - 1) * 5
  reply[b + 1], reply[b + 2], reply[b + 3], reply[b + 4], reply[b + 5] = peek(i)
  if reply[b + 1] == 0 and ARGV[3 + (i - 1) * 4 + 3] ~= '1' then
    blocked = true
  end
end
if record and not blocked then
  for i = 1, #KEYS do
    local b = (i - 1) * 5
    if reply[b + 1] == 1 then
      reply[b + 2], reply[b + 3], reply[b + 5] = record_one(i, reply[b + 2], reply[b + 3],
        reply[b + 5])
    end
  end
end
return reply
