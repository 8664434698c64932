-- The sliding-window log for one counter key (contract §3.2 and §4); the same arithmetic as
-- src/limiter/algo/sliding_log.rs. The key is a sorted set of allowed-request times (ms, the
-- score) by unique member. Entries at or before now - window have left the window; a request
-- has room when fewer than `limit` remain. Only recorded requests are added, and the key
-- expires one window after its newest entry.
--
-- This file defines the algorithm's two steps for lua/check.lua, which runs them.

local sliding_log = {}

-- The decision as if the request were not recorded:
-- {room (1|0), count, remaining, retry_after_ms, reset_ms}. A look-only call (`dry`) writes
-- nothing; a deciding call first drops what has left the window.
function sliding_log.peek(key, now, limit, window, dry)
  local cutoff = now - window
  local count
  if dry then
    count = redis.call('ZCOUNT', key, '(' .. cutoff, '+inf')
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    count = redis.call('ZCARD', key)
  end
  -- The time of the i-th live entry (from 0), oldest first.
  local function entry(i)
    local e
    if dry then
      e = redis.call('ZRANGEBYSCORE', key, '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', i, 1)
    else
      e = redis.call('ZRANGE', key, i, i, 'WITHSCORES')
    end
    return tonumber(e[2])
  end
  local function until_leaves(t)
    local d = t + window - now
    if d < 1 then
      d = 1
    end
    return d
  end
  if count < limit then
    local reset = 0
    if count > 0 then
      reset = until_leaves(entry(0))
    end
    return {1, count, limit - count, 0, reset}
  end
  -- Full: a slot frees when the entry that keeps the log at `limit` leaves the window.
  local wait = until_leaves(entry(count - limit))
  return {0, count, 0, wait, wait}
end

-- Records the request at `now` and updates its decision `r` to count it.
function sliding_log.record(key, now, limit, window, member, r)
  redis.call('ZADD', key, now, member)
  -- The newest entry is the last to expire: the key lives exactly as long as it matters.
  redis.call('PEXPIRE', key, window)
  if r[2] == 0 then
    r[5] = window
  end
  r[2] = r[2] + 1
  r[3] = r[3] - 1
end
