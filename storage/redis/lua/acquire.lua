-- KEYS: lock, epoch   ARGV: owner, lease_ms, heartbeat key prefix
-- The epoch grows with every acquisition: it is the fencing token commits are checked against.
local holder = redis.call('GET', KEYS[1])
if holder then
  -- A holder whose instance stopped heart-beating (killed) cannot release: take over.
  local instance = string.match(holder, '^([^/]+)/')
  if instance and redis.call('EXISTS', ARGV[3] .. instance) == 0 then
    redis.call('DEL', KEYS[1])
  else
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
