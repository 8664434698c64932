-- The generic cell rate algorithm for one counter key (contract §7); the same arithmetic as
-- src/limiter/algo/gcra.rs. The key is a string: the theoretical arrival time (TAT) of the
-- next request, in microseconds of this server's clock. With T = window / limit (whole
-- microseconds, at least 1) and tau = T x (limit - 1), a request has room when it is at most
-- tau ahead of its rate; recording it moves the TAT on by T. The key expires when the TAT
-- passes: from then on it is as good as fresh. Steps as in lua/sliding_log.lua; the state
-- passed from peek to record is the TAT.

local function gcra()
  local function params(limit, window)
    local t = math.floor(window * 1000 / limit)
    if t < 1 then
      t = 1
    end
    return t, t * (limit - 1)
  end

  -- Room for `cost` units: as many are conformant now.
  local function peek(key, _, now_us, limit, window, _, _, cost)
    local t, tau = params(limit, window)
    -- Absent, or another algorithm's state (a rule that changed algorithm on reload): fresh.
    local v = typed('GET', key)
    local tat = 0
    if type(v) == 'string' then
      tat = tonumber(v) or 0
    end
    local d = tat - now_us
    if d < 0 then
      d = 0
    end
    local remaining = 0
    if d <= tau then
      remaining = math.floor((tau - d) / t) + 1
    end
    if remaining >= cost then
      local reset = 0
      if d > 0 then
        -- The next request's worth frees when d has fallen enough to raise `remaining`.
        reset = math.ceil((d + remaining * t - tau) / 1000)
      end
      return 1, limit - remaining, remaining, 0, reset, tat
    end
    -- `cost` units fit once d has fallen to tau - (cost - 1) x T (a cost above the limit
    -- never does, and is told to wait as if it could).
    local wait = math.ceil((d - math.max(tau - (cost - 1) * t, 0)) / 1000)
    if wait < 1 then
      wait = 1
    end
    return 0, limit - remaining, remaining, wait, wait, tat
  end

  local function record(key, _, now_us, limit, window, _, count, remaining, _, tat, cost)
    local t, tau = params(limit, window)
    local ahead = tat - now_us
    if ahead < 0 then
      ahead = 0
    end
    local reset = math.ceil((ahead + remaining * t - tau) / 1000)
    if tat < now_us then
      tat = now_us
    end
    tat = tat + cost * t
    -- %.0f: the whole number, where tostring would switch to an exponent.
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now_us) / 1000))
    return count + cost, remaining - cost, reset, 0
  end

  -- Stores a TAT, or deletes the key once it has passed (the key is as good as fresh).
  local function store(key, tat, now_us)
    if tat <= now_us then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now_us) / 1000))
    end
  end

  -- Moves the TAT back by the units not used (never before now: what has drained cannot be
  -- given back), or on by those used beyond the reservation.
  local function settle(key, _, now_us, limit, window, _, reserved, actual)
    local t = params(limit, window)
    local v = typed('GET', key)
    if v == nil then
      return 0
    end
    local tat = 0
    if type(v) == 'string' then
      tat = tonumber(v) or 0
    end
    local after
    if actual >= reserved then
      after = math.max(tat, now_us) + (actual - reserved) * t
    else
      after = math.max(tat - (reserved - actual) * t, math.min(now_us, tat))
    end
    store(key, after, now_us)
    -- In whole units, to the nearest: what drained meanwhile is a fraction of one.
    local given = (math.max(tat, now_us) - math.max(after, now_us)) / t
    if given >= 0 then
      return math.floor(given + 0.5)
    end
    return math.ceil(given - 0.5)
  end

  -- Taking a request back is settling it at nothing: the state as if it had not been
  -- recorded (or later, never earlier, when the TAT had already passed at the record).
  local function release(key, now, now_us, limit, window, _, _, cost)
    settle(key, now, now_us, limit, window, 0, cost, 0)
  end

  -- Grants what is conformant now (`remaining`, from peek), and moves the TAT on from the
  -- lease's end: the state as if every slot were used then, so that slots used early cannot
  -- overrun the burst, nor slots used late let others take the refill meanwhile. The lease
  -- lasts at most the time its own slots take to refill (granted x T), so what it holds back
  -- from others is never more than it was granted. The mark is the TAT before the lease.
  local function take(key, now, now_us, limit, window, lease, _, wanted, remaining, tat)
    local t = params(limit, window)
    local granted = math.min(wanted, remaining)
    local ends = math.floor((now_us + math.min(lease * 1000, granted * t)) / 1000)
    local after = math.max(tat, ends * 1000) + granted * t
    redis.call('SET', key, string.format('%.0f', after), 'PX', math.ceil((after - now_us) / 1000))
    return granted, ends, tat
  end

  -- While no lease was taken after this one, the TAT goes back to what the used slots need
  -- if they were all used now; else nothing goes back (the TAT is shared with the later
  -- lease, which counted on it), and the slots free as the TAT passes.
  local function give(key, _, now_us, limit, window, _, granted, unused, before, ends)
    local t = params(limit, window)
    local v = typed('GET', key)
    if type(v) ~= 'string' or not tonumber(v) then
      return 0
    end
    if tonumber(v) ~= math.max(before, ends * 1000) + granted * t then
      return 0
    end
    local tat = math.max(before, now_us) + (granted - unused) * t
    if tat <= now_us then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now_us) / 1000))
    end
    return unused
  end

  return peek, record, release, take, give, settle
end
