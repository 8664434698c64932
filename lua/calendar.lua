-- A calendar quota for one counter key (contract §15); the same arithmetic as
-- src/limiter/algo/calendar.rs. The key is a string: the units counted in the current period,
-- expiring when the period ends. The gateway works the period out in its zone (days, weeks,
-- months, daylight saving included) and passes `window_ms` as the milliseconds left until
-- its end: the first request of a period sets the key to live that long, so the count
-- starts afresh at the boundary, whatever the clock of this server says. Steps as in
-- lua/sliding_log.lua; calendar quotas are never leased (a config error), so `take` and
-- `give` refuse.

local function calendar()
  -- The units counted, and how long the key has left (its period's remainder).
  local function counted(key, window)
    local v = typed('GET', key)
    local count = tonumber(v) or 0
    if count <= 0 then
      return 0, window
    end
    local left = redis.call('PTTL', key)
    if left < 0 then
      left = window
    end
    return count, left
  end

  local function peek(key, _, _, limit, window, _, _, cost)
    local count, left = counted(key, window)
    local remaining = math.max(limit - count, 0)
    if count + cost <= limit then
      local reset = 0
      if count > 0 then
        reset = left
      end
      return 1, count, remaining, 0, reset, count
    end
    return 0, count, remaining, left, left, count
  end

  local function record(key, _, _, _, window, _, count, remaining, _, before, cost)
    if before <= 0 then
      redis.call('SET', key, cost, 'PX', window)
    else
      redis.call('INCRBY', key, cost)
    end
    local left = redis.call('PTTL', key)
    if left < 0 then
      left = window
    end
    return count + cost, remaining - cost, left, 1
  end

  -- Units given back (or charged) in the period still running; nothing once it has ended.
  local function settle(key, _, _, _, _, _, reserved, actual)
    local v = typed('GET', key)
    if tonumber(v) == nil then
      return 0
    end
    local count = tonumber(v)
    local after = math.max(count + actual - reserved, 0)
    redis.call('SET', key, after, 'KEEPTTL')
    return count - after
  end

  local function release(key, now, now_us, limit, window, _, _, cost)
    settle(key, now, now_us, limit, window, 0, cost, 0)
  end

  local function take()
    error('calendar quotas are not leased')
  end
  local give = take

  local function count(key)
    return tonumber(typed('GET', key)) or 0
  end

  return peek, record, release, take, give, settle, count
end
