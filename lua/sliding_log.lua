-- The sliding-window log for one counter key (contract §3.2 and §4); the same arithmetic as
-- src/limiter/algo/sliding_log.rs. The key is a sorted set of allowed-request times (ms, the
-- score) by unique member. Entries at or before now - window have left the window; a request
-- has room when fewer than `limit` remain. Only recorded requests are added, and the key
-- expires one window after its newest entry.
--
-- Like every algorithm file, this defines one function for lua/check.lua and lua/count.lua,
-- named after the algorithm, that returns the algorithm's two steps. Only the steps of the
-- algorithms a call uses are made (a script's functions are made anew on every call), and
-- they return several values rather than tables, so a one-rule check costs Redis little more
-- than the bare commands. The steps take the same arguments (each ignores what it does not
-- need):
--   peek(key, now_ms, now_us, limit, window_ms, dry, want_reset)
--     -> room (1|0), count, remaining, retry_after_ms, reset_ms, state
--   record(key, now_ms, now_us, limit, window_ms, member, count, remaining, reset, state)
--     -> count, remaining, reset_ms (counting the request), mark
--   release(key, now_ms, now_us, limit, window_ms, member, mark)
--     takes a recorded request back (lua/release.lua: Redis Cluster, when another slot's rule
--     refused the request); `mark` is what record returned.
--   take(key, now_ms, now_us, limit, window_ms, lease_ms, lease_id, wanted, remaining, state)
--     -> granted, lease_end_ms, mark
--     reserves up to `wanted` of the `remaining` slots peek found for a lease (lua/lease.lua),
--     each counted as if used at the lease's end, so that however the node spends them no
--     window ever holds more than the limit.
--   give(key, now_ms, now_us, limit, window_ms, lease_id, granted, unused, mark, lease_end_ms)
--     -> given: takes back the `unused` slots of a lease that `take` granted.

local function sliding_log()
  -- The decision as if the request were not recorded. A look-only call (`dry`) writes nothing;
  -- a deciding call first drops what has left the window. `reset_ms` (when the oldest entry
  -- leaves) costs one more read, so it is worked out only when asked for or when full.
  local function peek(key, now, _, limit, window, dry, want_reset)
    local cutoff = now - window
    local count
    if dry then
      count = redis.pcall('ZCOUNT', key, '(' .. cutoff, '+inf')
    else
      count = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', cutoff)
      if type(count) == 'number' then
        count = redis.call('ZCARD', key)
      end
    end
    if type(count) ~= 'number' then
      -- Another algorithm's state: a rule that changed algorithm on reload starts afresh.
      if not dry then
        redis.call('DEL', key)
      end
      return 1, 0, limit, 0, 0
    end
    -- The i-th live entry (from 0, oldest first) is read only when needed.
    local i
    if count >= limit then
      -- Full: a slot frees when the entry that keeps the log at `limit` leaves the window.
      i = count - limit
    elseif want_reset and count > 0 then
      i = 0
    else
      return 1, count, limit - count, 0, 0
    end
    local e
    if dry then
      e = redis.call('ZRANGEBYSCORE', key, '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', i, 1)
    else
      e = redis.call('ZRANGE', key, i, i, 'WITHSCORES')
    end
    local wait = tonumber(e[2]) + window - now
    if wait < 1 then
      wait = 1
    end
    if count >= limit then
      return 0, count, 0, wait, wait
    end
    return 1, count, limit - count, 0, wait
  end

  -- Records the request at `now`.
  local function record(key, now, _, _, window, member, count, remaining, reset)
    redis.call('ZADD', key, now, member)
    -- The newest entry is the last to expire: the key lives exactly as long as it matters.
    redis.call('PEXPIRE', key, window)
    if count == 0 then
      -- The new entry is the oldest: more quota frees when it leaves.
      reset = window
    end
    return count + 1, remaining - 1, reset, 0
  end

  local function release(key, _, _, _, _, member)
    redis.call('ZREM', key, member)
  end

  -- Calls `command` on `key` for the members of lease `id` from `from` to `to`, each after
  -- `score` when there is one, at most 500 at a time; returns the sum of the replies.
  local function each_member(command, key, id, from, to, score)
    local sum, i = 0, from
    while i <= to do
      local last = math.min(to, i + 499)
      local args = {}
      for j = i, last do
        if score then
          args[#args + 1] = score
        end
        args[#args + 1] = id .. ':' .. j
      end
      sum = sum + redis.call(command, key, unpack(args))
      i = last + 1
    end
    return sum
  end

  -- A lease's slots are entries stamped at its end: they stay in every window that could
  -- hold a request made with them, and leave one window after the lease.
  local function take(key, now, _, _, window, lease, id, wanted, remaining)
    local granted = math.min(wanted, remaining)
    local stamp = now + lease
    each_member('ZADD', key, id, 1, granted, stamp)
    -- Never shorten the key's life: another lease may end later.
    local need = stamp + window - now
    if redis.call('PTTL', key) < need then
      redis.call('PEXPIRE', key, need)
    end
    return granted, stamp, 0
  end

  -- The unused slots are the lease's last members.
  local function give(key, _, _, _, _, id, granted, unused)
    return each_member('ZREM', key, id, granted - unused + 1, granted)
  end

  return peek, record, release, take, give
end
