-- Concurrency slots for one counter key (contract §14); the same arithmetic as
-- src/limiter/algo/concurrency.rs. The key is a sorted set of the requests in flight: member
-- '<node instance>-<sequence, hex>' (the member id lua/check.lua is given), score the time
-- (ms) the slot expires unless its node renews it. A request has room when fewer than
-- `limit` slots are live. `window_ms` is the rule's slot_ttl_ms: a node renews the slots of
-- its running requests well within it, so only a node that died lets one expire, and the key
-- lives at least one ttl after its last write (every member expires by then).
--
-- The mark of a slot is its sequence number: with the node's instance (lua/settle.lua's
-- `owner`), it names the member again. Settling a slot at 0 units frees it (the request has
-- ended); at the 1 unit it holds, renews it (the request still runs). Slots are never leased
-- (a config error), so `take` and `give` refuse. Steps as in lua/sliding_log.lua.

local function concurrency()
  -- Live slots now (expired ones dropped unless `dry`); nil for a key of another type.
  local function live(key, now, dry)
    if dry then
      return typed('ZCOUNT', key, '(' .. now, '+inf')
    end
    if typed('ZREMRANGEBYSCORE', key, '-inf', now) == nil then
      return nil
    end
    return redis.call('ZCARD', key)
  end

  -- The key lives at least `window` more: never shortened, so that slots renewed under a
  -- longer ttl (before a reload) are not dropped with the key.
  local function extend(key, window)
    if redis.call('PTTL', key) < window then
      redis.call('PEXPIRE', key, window)
    end
  end

  -- Room for one more request in flight. The state passed to record says whether the key
  -- held another algorithm's state (a rule that changed on reload), to start it afresh.
  local function peek(key, now, _, limit, _, dry)
    local count = live(key, now, dry)
    local other = count == nil
    count = count or 0
    if count < limit then
      return 1, count, limit - count, 0, 0, other
    end
    -- A slot frees when a response ends, which nothing here can foresee: a second.
    return 0, count, 0, 1000, 1000, other
  end

  local function record(key, now, _, _, window, member, count, remaining, _, other)
    if other then
      redis.call('DEL', key)
    end
    redis.call('ZADD', key, now + window, member)
    extend(key, window)
    local mark = tonumber(string.match(member, '%-(%x+)$'), 16) or 0
    return count + 1, remaining - 1, 0, mark
  end

  -- A request recorded and then refused by another slot's rule (lua/release.lua).
  local function release(key, _, _, _, _, member)
    typed('ZREM', key, member)
  end

  local function settle(key, now, _, _, window, mark, _, actual, owner)
    local member = owner .. '-' .. string.format('%x', mark)
    if actual == 0 then
      return typed('ZREM', key, member) or 0
    end
    if typed('ZADD', key, 'XX', 'CH', now + window, member) == 1 then
      extend(key, window)
    end
    return 0
  end

  local function take()
    error('concurrency slots are not leased')
  end
  local give = take

  local function count(key, now)
    return typed('ZCOUNT', key, '(' .. now, '+inf') or 0
  end

  return peek, record, release, take, give, settle, count
end
