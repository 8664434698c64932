-- The one protected call of the scripts, prepended before the algorithm files
-- (src/limiter/backend/redis/scripts.rs).
--
-- typed(command, key, ...): `command` on a key that may hold another algorithm's state (a
-- rule that changed algorithm on reload). Returns nil for a key of another type, which the
-- caller treats as fresh; any other error (a command the ACL user may not run) is raised as
-- Redis gave it, never taken for a fresh key (which would forget every count).
local function typed(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then
      return nil
    end
    return redis.call(command, key, ...)
  end
  return reply
end
