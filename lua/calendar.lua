-- A calendar quota for one counter key (contract §15); the same arithmetic as
-- src/limiter/algo/calendar.rs. The key is a string `c:<units>:<end>`: the units counted in
-- the current period, and when the period ends (ms of this server's clock). The gateway
-- works the period out in its zone (days, weeks, months, daylight saving included) and
-- passes `window_ms` as the milliseconds left until its end: the first request of a period
-- writes the key to live that long, so the count starts afresh at the boundary, whatever the
-- clock of this server says. The mark of a record is the period's end, so a settlement
-- after the boundary leaves the new period alone. A key of another algorithm (a rule that
-- changed on reload) has no `c:` and starts afresh. Steps as in lua/sliding_log.lua;
-- calendar quotas are never leased (a config error), so `take` and `give` refuse.

local function calendar()
  -- The units counted and the period's end; 0, nil for a fresh key.
  local function read(key)
    local v = typed('GET', key)
    if type(v) ~= 'string' then
      return 0, nil
    end
    local count, ends = string.match(v, '^c:(%d+):(%d+)$')
    if not count then
      return 0, nil
    end
    return tonumber(count), tonumber(ends)
  end

  local function write(key, count, ends, now)
    redis.call('SET', key, string.format('c:%d:%.0f', count, ends), 'PX', math.max(ends - now, 1))
  end

  local function peek(key, now, _, limit, window, _, _, cost)
    local count, ends = read(key)
    local left = window
    if ends then
      left = math.max(ends - now, 1)
    end
    local remaining = math.max(limit - count, 0)
    if count + cost <= limit then
      local reset = 0
      if count > 0 then
        reset = left
      end
      return 1, count, remaining, 0, reset, ends or false
    end
    return 0, count, remaining, left, left, ends or false
  end

  local function record(key, now, _, _, window, _, count, remaining, _, ends, cost)
    if not ends then
      ends = now + window
    end
    write(key, count + cost, ends, now)
    return count + cost, remaining - cost, math.max(ends - now, 1), ends
  end

  -- Units given back (or charged) in the period the record was made in; nothing once it has
  -- ended.
  local function settle(key, now, _, _, _, mark, reserved, actual)
    local count, ends = read(key)
    if not ends or ends ~= mark then
      return 0
    end
    local after = math.max(count + actual - reserved, 0)
    write(key, after, ends, now)
    return count - after
  end

  local function release(key, now, now_us, limit, window, _, mark, cost)
    settle(key, now, now_us, limit, window, mark, cost, 0)
  end

  local function take()
    error('calendar quotas are not leased')
  end
  local give = take

  local function count(key)
    local n = read(key)
    return n
  end

  return peek, record, release, take, give, settle, count
end
