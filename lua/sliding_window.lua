-- Sliding-window log check for one key, atomically (contract §3.2 and §4).
--
-- KEYS[1]  ratelimit:<key>, a sorted set of allowed-request times (ms, score) by unique member
-- ARGV[1]  limit: requests allowed per window (> 0)
-- ARGV[2]  window_ms: window length in ms (> 0)
-- ARGV[3]  member: an id unique across every gateway node (node instance + sequence)
--
-- Returns {allowed (1|0), count, remaining, retry_after_ms}. The arithmetic is the same as
-- src/limiter/window.rs: entries at or before now - window_ms are expired; a request is
-- allowed when fewer than `limit` remain, and only allowed requests are recorded. Time comes
-- from this server's clock (TIME), so gateway nodes with skewed clocks agree.

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)

if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  -- The newest entry is the last to expire: the key lives exactly as long as it matters.
  redis.call('PEXPIRE', key, window)
  return {1, count + 1, limit - count - 1, 0}
end

-- Blocked: a slot frees when the entry that keeps the log at `limit` leaves the window.
local freeing = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
local retry = tonumber(freeing[2]) + window - now
if retry < 1 then
  retry = 1
end
return {0, count, 0, retry}
