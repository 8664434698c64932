-- The sliding-window log for one counter key (contract §3.2 and §4); the same arithmetic as
-- src/limiter/algo/sliding_log.rs. The key is a sorted set of allowed-request times (ms, the
-- score) by unique member. Entries at or before now - window have left the window; a request
-- has room when fewer than `limit` remain. Only recorded requests are added, and the key
-- expires one window after its newest entry.
--
-- A lease (lua/lease.lua) is one entry for all its slots, member '<lease id>#<slots>', so
-- taking and giving back cost the same whatever the lease's size. The member '#' keeps the
-- tally of the slots such entries hold beyond one each, in its score (TALLY_BASE + slots,
-- above every time, so no window ever drops it): a count stays ZCARD - 1 + tally. It exists
-- from a key's first lease until the key expires; a key that never had one is as before.
--
-- Like every algorithm file, this defines one function for lua/check.lua and lua/count.lua,
-- named after the algorithm, that returns the algorithm's two steps. Only the steps of the
-- algorithms a call uses are made (a script's functions are made anew on every call), and
-- they return several values rather than tables, so a one-rule check costs Redis little more
-- than the bare commands. The steps take the same arguments (each ignores what it does not
-- need):
--   peek(key, now_ms, now_us, limit, window_ms, dry, want_reset, cost)
--     -> room (1|0), count, remaining, retry_after_ms, reset_ms, state: room for `cost`
--     units (contract §13); counts are in units
--   record(key, now_ms, now_us, limit, window_ms, member, count, remaining, reset, state, cost)
--     -> count, remaining, reset_ms (counting the request's units), mark
--   release(key, now_ms, now_us, limit, window_ms, member, mark, cost)
--     takes a recorded request back (lua/release.lua: Redis Cluster, when another slot's rule
--     refused the request); `mark` is what record returned.
--   take(key, now_ms, now_us, limit, window_ms, lease_ms, lease_id, wanted, remaining, state)
--     -> granted, lease_end_ms, mark
--     reserves up to `wanted` of the `remaining` slots peek found for a lease (lua/lease.lua),
--     each counted as if used at the lease's end, so that however the node spends them no
--     window ever holds more than the limit.
--   give(key, now_ms, now_us, limit, window_ms, lease_id, granted, unused, mark, lease_end_ms)
--     -> given: takes back the `unused` slots of a lease that `take` granted.
--   settle(key, now_ms, now_us, limit, window_ms, mark, reserved, actual, owner) -> given:
--     the request recorded with `reserved` units (its `mark`) now holds `actual`; returns the
--     units given back (negative: charged), 0 once its record has gone (lua/settle.lua).
--     `owner` is the settling node's instance id (a concurrency slot's member starts with it).
--   count(key, now_ms) -> how many slots the key holds now (lua/count.lua), when the
--     algorithm knows better than peek with the rule's window (a log knows its own).
--
-- A request of several units (a cost, contract §13) is one entry too, member
-- '<member>#<units>', counted through the tally as a lease's is.

local function sliding_log()
  local TALLY, TALLY_BASE = '#', 10000000000000

  -- The slots an entry holds: a lease's are in its member's name.
  local function slots(member)
    local n = string.match(member, '#(%d+)$')
    if n then
      return tonumber(n)
    end
    return 1
  end

  -- The slots beyond one each held by the entries at or before `cutoff` (they have left the
  -- window and are still in the set).
  local function tally_upto(key, cutoff)
    local sum = 0
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', cutoff)) do
      sum = sum + slots(member) - 1
    end
    return sum
  end

  -- The time of the live entry holding the n-th slot (from 1, oldest first), on a key with
  -- leases: entries are read a batch at a time, as far as needed.
  local function slot_time(key, cutoff, n)
    local seen, from = 0, 0
    while true do
      local batch = redis.call('ZRANGEBYSCORE', key, '(' .. cutoff, '(' .. TALLY_BASE,
        'WITHSCORES', 'LIMIT', from, 64)
      if #batch == 0 then
        return nil
      end
      for j = 1, #batch, 2 do
        seen = seen + slots(batch[j])
        if seen >= n then
          return tonumber(batch[j + 1])
        end
      end
      from = from + 64
    end
  end

  -- The decision as if the request were not recorded. A look-only call (`dry`) writes nothing;
  -- a deciding call first drops what has left the window. `reset_ms` (when the oldest entry
  -- leaves) costs one more read, so it is worked out only when asked for or when full.
  -- `state` is the key's tally of leased slots, false when it never had a lease.
  local function peek(key, now, _, limit, window, dry, want_reset, cost)
    local cutoff = now - window
    -- nil: another algorithm's state; false: a log that never had a lease.
    local tally = typed('ZSCORE', key, TALLY)
    if tally == nil then
      -- A rule that changed algorithm on reload starts afresh.
      if not dry then
        redis.call('DEL', key)
      end
      if cost > limit then
        return 0, 0, limit, window, window, false
      end
      return 1, 0, limit, 0, 0, false
    end
    local count
    if tally then
      tally = tonumber(tally) - TALLY_BASE
      local gone = tally_upto(key, cutoff)
      if dry then
        count = redis.call('ZCOUNT', key, '(' .. cutoff, '(' .. TALLY_BASE) + tally - gone
      else
        if gone > 0 then
          tally = tally - gone
          redis.call('ZINCRBY', key, -gone, TALLY)
        end
        redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
        count = redis.call('ZCARD', key) - 1 + tally
      end
    elseif dry then
      count = redis.call('ZCOUNT', key, '(' .. cutoff, '+inf')
    else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
      count = redis.call('ZCARD', key)
    end
    -- The time of the entry whose leaving makes room (when full), or of the oldest.
    local at
    if count + cost > limit then
      if cost > limit then
        -- More than the limit never fits.
        return 0, count, math.max(limit - count, 0), window, window, tally
      end
      -- Full for `cost`: room comes when the unit that keeps the log above `limit - cost`
      -- leaves the window.
      at = count + cost - limit - 1
    elseif want_reset and count > 0 then
      at = 0
    else
      return 1, count, limit - count, 0, 0, tally
    end
    local oldest
    if tally then
      -- (The tally never counts more than the entries hold; `now` only guards the sum.)
      oldest = slot_time(key, cutoff, at + 1) or now
    else
      -- The at-th live entry (from 0, oldest first).
      local e
      if dry then
        e = redis.call('ZRANGEBYSCORE', key, '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', at,
          1)
      else
        e = redis.call('ZRANGE', key, at, at, 'WITHSCORES')
      end
      oldest = tonumber(e[2])
    end
    local wait = oldest + window - now
    if wait < 1 then
      wait = 1
    end
    if count + cost > limit then
      return 0, count, math.max(limit - count, 0), wait, wait, tally
    end
    return 1, count, limit - count, 0, wait, tally
  end

  -- Sets the key to expire `ms` from now, unless a lease keeps it longer.
  local function expire_after(key, ms, leased)
    if not leased or redis.call('PTTL', key) < ms then
      redis.call('PEXPIRE', key, ms)
    end
  end

  -- Adds `n` to the tally, creating it on a key that has none (one command either way).
  local function add_to_tally(key, n, tally)
    if not tally then
      redis.call('ZADD', key, TALLY_BASE + n, TALLY)
    else
      redis.call('ZINCRBY', key, n, TALLY)
    end
  end

  -- Records the request's units at `now`; the mark is that time.
  local function record(key, now, _, _, window, member, count, remaining, reset, tally, cost)
    if cost > 1 then
      -- Once, even when a retried call records the same member again.
      if redis.call('ZADD', key, now, member .. '#' .. cost) == 1 then
        add_to_tally(key, cost - 1, tally)
      end
    else
      redis.call('ZADD', key, now, member)
    end
    -- The newest entry is the last to expire: the key lives exactly as long as it matters.
    expire_after(key, window, tally)
    if count == 0 then
      -- The new entry is the oldest: more quota frees when it leaves.
      reset = window
    end
    return count + cost, remaining - cost, reset, now
  end

  local function release(key, _, _, _, _, member, _, cost)
    if cost > 1 then
      if redis.call('ZREM', key, member .. '#' .. cost) == 1 then
        redis.call('ZINCRBY', key, 1 - cost, TALLY)
      end
    else
      redis.call('ZREM', key, member)
    end
  end

  -- The entry of the request recorded at `mark` with `reserved` units: entries of the same
  -- time and units are alike, so any one of them is the request's.
  local function settle(key, now, _, _, window, mark, reserved, actual)
    local found
    local members = typed('ZRANGEBYSCORE', key, mark, mark)
    if not members then
      return 0
    end
    for _, m in ipairs(members) do
      if slots(m) == reserved then
        found = m
        break
      end
    end
    if not found then
      return 0
    end
    redis.call('ZREM', key, found)
    local base = string.match(found, '^(.-)#%d+$') or found
    if actual == 1 then
      redis.call('ZADD', key, mark, base)
    elseif actual > 1 then
      redis.call('ZADD', key, mark, base .. '#' .. actual)
    end
    -- The tally holds the units beyond one of each entry.
    local delta = math.max(actual - 1, 0) - (reserved - 1)
    if delta ~= 0 then
      add_to_tally(key, delta, redis.call('ZSCORE', key, TALLY))
    end
    if actual == 0 then
      -- The entry may have been the newest: the key lives one window after its newest entry
      -- again (which lua/count.lua relies on), or goes with the last one.
      local newest = redis.call('ZREVRANGEBYSCORE', key, '(' .. TALLY_BASE, '-inf',
        'WITHSCORES', 'LIMIT', 0, 1)
      if #newest == 0 then
        redis.call('DEL', key)
      elseif redis.call('PTTL', key) > tonumber(newest[2]) + window - now then
        redis.call('PEXPIRE', key, math.max(tonumber(newest[2]) + window - now, 1))
      end
    end
    return reserved - actual
  end

  -- A lease's slots are stamped at its end: they stay in every window that could hold a
  -- request made with them, and leave one window after the lease.
  local function take(key, now, _, _, window, lease, id, wanted, remaining, tally)
    local granted = math.min(wanted, remaining)
    local stamp = now + lease
    -- Taken already when the call is retried after a lost reply: counted once. (A retry
    -- granted fewer adds a second entry, which only keeps slots out until it leaves.)
    if redis.call('ZADD', key, 'NX', stamp, id .. '#' .. granted) == 1 then
      if not tally then
        redis.call('ZADD', key, TALLY_BASE, TALLY)
      end
      if granted > 1 then
        redis.call('ZINCRBY', key, granted - 1, TALLY)
      end
    end
    expire_after(key, stamp + window - now, true)
    return granted, stamp, 0
  end

  -- The lease's entry shrinks to the slots used, or goes when none were; nothing is given
  -- once it has left the window (or the counter was reset), or a second time.
  local function give(key, now, _, _, window, id, granted, unused, _, stamp)
    if redis.call('ZREM', key, id .. '#' .. granted) == 0 then
      return 0
    end
    unused = math.min(unused, granted)
    local used = granted - unused
    if used > 0 then
      redis.call('ZADD', key, stamp, id .. '#' .. used)
      redis.call('ZINCRBY', key, -unused, TALLY)
      return unused
    end
    redis.call('ZINCRBY', key, 1 - granted, TALLY)
    -- The entry may have been what kept the key alive: it now lives one window after its
    -- newest entry again (which lua/count.lua relies on), or goes with the last one.
    local newest = redis.call('ZREVRANGEBYSCORE', key, '(' .. TALLY_BASE, '-inf', 'WITHSCORES',
      'LIMIT', 0, 1)
    if #newest == 0 then
      redis.call('DEL', key)
    else
      redis.call('PEXPIRE', key, math.max(tonumber(newest[2]) + window - now, 1))
    end
    return unused
  end

  -- A log knows its own window, which /check may have set: the key expires `window` after
  -- its newest entry, so newest - PTTL = now - window is the cut-off.
  local function count(key, now)
    local newest = typed('ZREVRANGEBYSCORE', key, '(' .. TALLY_BASE, '-inf', 'WITHSCORES',
      'LIMIT', 0, 1)
    if not newest or #newest == 0 then
      return 0
    end
    local pttl = redis.call('PTTL', key)
    -- No expiry: not written by the check script; everything there counts.
    local window = now + 1
    if pttl >= 0 then
      window = now - tonumber(newest[2]) + pttl
    end
    local _, n = peek(key, now, nil, math.huge, window, true, false, 1)
    return n
  end

  return peek, record, release, take, give, settle, count
end
