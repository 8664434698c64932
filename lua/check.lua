-- One request's checks, decided atomically (contract §7): every check is peeked at first;
-- only when every check that is not a shadow has room is the request recorded, in each check
-- with room. A request blocked by any check is recorded in none. Time comes from this
-- server's clock (TIME), so gateway nodes with skewed clocks agree.
--
-- The algorithm files in lua/ are prepended to this one, with ALGORITHMS, the table of them by
-- id, generated from the registry in src/limiter/algo/mod.rs.
--
-- KEYS[i]   ratelimit:<counter key>, one per check
-- ARGV[1]   flags: 1 = decide and record (else look only, writing nothing, for /api/explain);
--           2 = also work out reset_ms for requests with room (the IETF fields need it)
-- ARGV[2]   a member id unique across every gateway node (node instance + sequence)
-- ARGV[3..] six values per key: algorithm id (1 sliding_log, 2 gcra, 3 sliding_window,
--           4 concurrency), limit (> 0), window_ms (> 0; a concurrency rule's slot ttl),
--           shadow (1|0), cost (units the request reserves, > 0), max_delay_ms (0: none)
--
-- Returns six integers per key, in order: room (1|0), count, remaining, retry_after_ms (for
-- a request with room: how long it is delayed), reset_ms (see src/limiter/algo/mod.rs,
-- Decision; a sliding log's reset_ms is 0 for a request with room unless asked for), and a
-- mark for lua/release.lua and lua/settle.lua (0 unless recorded). Counts are in units.
--
-- A key with max_delay_ms (gcra's `delay`, contract §14) has room for a request that would
-- have room within that time: it is recorded now (its place reserved at arrival) and told
-- the wait; a longer wait is told to come back when it would be admitted with a delay.
-- Decision::delayed in src/limiter/algo/mod.rs is the same.

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local flags = tonumber(ARGV[1])
local record = flags % 2 == 1
local want_reset = flags >= 2
local STRIDE = 6

-- A peek's answer for a key that may delay requests up to `delay` ms (a request of more
-- units than the limit never fits, and is never delayed).
local function delayed(room, remaining, retry, reset, delay, cost, limit)
  if room == 1 or delay == 0 or cost > limit then
    return room, remaining, retry, reset
  end
  if retry <= delay then
    return 1, 0, retry, 0
  end
  return 0, remaining, retry - delay, retry - delay
end

-- One check, the common case: only its algorithm's steps are made, and no bookkeeping.
if #KEYS == 1 then
  local id, key = ARGV[3], KEYS[1]
  local load = ALGORITHMS[tonumber(id)]
  if not load then
    return redis.error_reply('unknown algorithm id ' .. tostring(id))
  end
  local peek, record_step = load()
  local limit, window, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
  local room, count, remaining, retry, reset, state =
    peek(key, now, now_us, limit, window, not record, want_reset, cost)
  room, remaining, retry, reset = delayed(room, remaining, retry, reset, tonumber(ARGV[8]), cost,
    limit)
  local mark = 0
  if room == 1 and record then
    count, remaining, reset, mark = record_step(key, now, now_us, limit, window, ARGV[2], count,
      remaining, reset, state, cost)
  end
  return {room, count, math.max(remaining, 0), retry, math.max(reset, 0), mark}
end

-- Several checks: the steps of each algorithm used, made once.
local loaders = ALGORITHMS
local steps = {}
local function steps_of(i)
  local id = tonumber(ARGV[3 + (i - 1) * STRIDE])
  if not steps[id] then
    if not loaders[id] then
      error('unknown algorithm id ' .. tostring(ARGV[3 + (i - 1) * STRIDE]))
    end
    steps[id] = {loaders[id]()}
  end
  return steps[id][1], steps[id][2]
end

local reply, states, blocked = {}, {}, false
for i = 1, #KEYS do
  local at, b = 3 + (i - 1) * STRIDE, (i - 1) * 6
  local peek = steps_of(i)
  reply[b + 1], reply[b + 2], reply[b + 3], reply[b + 4], reply[b + 5], states[i] =
    peek(KEYS[i], now, now_us, tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), not record,
      want_reset, tonumber(ARGV[at + 4]))
  reply[b + 1], reply[b + 3], reply[b + 4], reply[b + 5] = delayed(reply[b + 1], reply[b + 3],
    reply[b + 4], reply[b + 5], tonumber(ARGV[at + 5]), tonumber(ARGV[at + 4]),
    tonumber(ARGV[at + 1]))
  reply[b + 6] = 0
  if reply[b + 1] == 0 and ARGV[at + 3] ~= '1' then
    blocked = true
  end
end
if record and not blocked then
  for i = 1, #KEYS do
    local at, b = 3 + (i - 1) * STRIDE, (i - 1) * 6
    if reply[b + 1] == 1 then
      local _, record_step = steps_of(i)
      reply[b + 2], reply[b + 3], reply[b + 5], reply[b + 6] = record_step(KEYS[i], now,
        now_us, tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[2], reply[b + 2],
        reply[b + 3], reply[b + 5], states[i], tonumber(ARGV[at + 4]))
      reply[b + 3], reply[b + 5] = math.max(reply[b + 3], 0), math.max(reply[b + 5], 0)
    end
  end
end
return reply
