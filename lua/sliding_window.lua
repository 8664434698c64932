-- The sliding-window counter for one counter key (contract §7); the same arithmetic, in the
-- same floating-point order, as src/limiter/algo/sliding_window.rs. The key is a hash: w (the
-- index of a fixed window, now / window since the Unix epoch), c (its count), p (the count
-- of the window before) and l (the window length they were counted in; under another length,
-- after a reload changed the rule's window, the key starts afresh). The estimate is c + p x (window - elapsed) / window, floored; a
-- request has room when it is below the limit. The key expires at the end of the window after
-- the one it counts. Steps as in lua/sliding_log.lua; the state passed from peek to record is
-- what peek read ({idx, elapsed, cur, prev, stored}, stored being the stored window index or
-- false for a key to write afresh), so record reads nothing again within the same script.

local function sliding_window()
  -- Milliseconds until the estimate falls below `target`, rolling into the next window when
  -- the current one alone holds it.
  local function until_below(target, elapsed, cur, prev, window)
    if cur < target then
      if prev == 0 then
        return 1
      end
      local e = math.floor(window - ((target - cur) * window) / prev) + 1
      if e < 0 then
        e = 0
      end
      local wait = e - elapsed
      if wait < 1 then
        wait = 1
      end
      return wait
    end
    local e = math.floor(window - (target * window) / cur) + 1
    if e < 1 then
      e = 1
    end
    return (window - elapsed) + e
  end

  -- The counts at `now` (ms): window index, elapsed, current, previous, and the stored index
  -- (false when the key is absent or holds another algorithm's state).
  local function counts(key, now, window)
    local idx = math.floor(now / window)
    local elapsed = now - idx * window
    local v = typed('HMGET', key, 'w', 'c', 'p', 'l')
    if not v or not v[1] or tonumber(v[4]) ~= window then
      return idx, elapsed, 0, 0, false
    end
    local s, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
    if s == idx then
      return idx, elapsed, c, p, s
    elseif s + 1 == idx then
      return idx, elapsed, 0, c, s
    elseif s > idx then
      -- The clock went back: never forget what the later window counted.
      return s, 0, c, p, s
    end
    return idx, elapsed, 0, 0, s
  end

  -- Room for `cost` units: the estimate at most `limit - cost`.
  local function peek(key, now, _, limit, window, _, _, cost)
    local idx, elapsed, cur, prev, stored = counts(key, now, window)
    local state = {idx, elapsed, cur, prev, stored}
    local n = math.floor(cur + (prev * (window - elapsed)) / window)
    local remaining = math.max(limit - n, 0)
    if n + cost <= limit then
      local reset = 0
      if n > 0 then
        reset = until_below(n, elapsed, cur, prev, window)
      end
      return 1, n, remaining, 0, reset, state
    end
    local wait
    if cost <= limit then
      wait = until_below(limit + 1 - cost, elapsed, cur, prev, window)
    else
      -- More than the limit never fits: told to wait until both windows are empty.
      wait = 2 * window - elapsed
    end
    return 0, n, remaining, wait, wait, state
  end

  local function record(key, now, _, _, window, _, count, remaining, _, state, cost)
    local idx, elapsed, cur, prev, stored = state[1], state[2], state[3], state[4], state[5]
    cur = cur + cost
    if stored == idx then
      redis.call('HINCRBY', key, 'c', cost)
    else
      -- A new window (or a new key): its expiry is the end of the next window.
      if stored == false then
        redis.call('DEL', key)
      end
      redis.call('HSET', key, 'w', idx, 'c', cur, 'p', prev, 'l', window)
      redis.call('PEXPIRE', key, (idx + 2) * window - now)
    end
    count = count + cost
    return count, remaining - cost, until_below(count, elapsed, cur, prev, window), idx
  end

  -- The request counted in window `mark` with `reserved` units now holds `actual`: the
  -- difference goes to that window's count (the current or, by now, the previous one), never
  -- below zero. Returns the units taken away (negative: added).
  local function settle(key, _, _, _, window, mark, reserved, actual)
    local v = typed('HMGET', key, 'w', 'c', 'p', 'l')
    if not v or not v[1] or tonumber(v[4]) ~= window then
      return 0
    end
    local w, field, held = tonumber(v[1]), nil, 0
    if w == mark then
      field, held = 'c', tonumber(v[2]) or 0
    elseif w == mark + 1 then
      field, held = 'p', tonumber(v[3]) or 0
    else
      return 0
    end
    local after = math.max(held + actual - reserved, 0)
    if after ~= held then
      redis.call('HSET', key, field, after)
    end
    return held - after
  end

  -- Taking a request back is settling it at nothing.
  local function release(key, now, now_us, limit, window, _, mark, cost)
    settle(key, now, now_us, limit, window, mark, cost, 0)
  end

  -- A lease's slots count in the current window, and the lease ends with it (or sooner): a
  -- slot is then used in the window that counts it, and decays with it afterwards.
  local function take(key, now, _, _, window, lease, _, wanted, remaining, state)
    local idx, cur, prev, stored = state[1], state[3], state[4], state[5]
    local granted = math.min(wanted, remaining)
    if stored == idx then
      redis.call('HINCRBY', key, 'c', granted)
    else
      if stored == false then
        redis.call('DEL', key)
      end
      redis.call('HSET', key, 'w', idx, 'c', cur + granted, 'p', prev, 'l', window)
      redis.call('PEXPIRE', key, (idx + 2) * window - now)
    end
    return granted, math.min(now + lease, (idx + 1) * window), idx
  end

  local function give(key, now, now_us, limit, window, _, _, unused, mark)
    return settle(key, now, now_us, limit, window, mark, unused, 0)
  end

  return peek, record, release, take, give, settle
end
