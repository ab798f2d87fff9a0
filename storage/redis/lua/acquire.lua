-- KEYS: lock, epoch   ARGV: owner, lease_ms, heartbeat key prefix
-- The epoch grows with every acquisition: it is the fencing token commits are checked against.
-- It is the server's clock in microseconds (or the last epoch + 1, if larger), not a plain
-- counter: after a failover to a replica that missed the last increments, a counter would
-- hand out an epoch a previous holder still has, and that holder's commits would pass.
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
local now = redis.call('TIME')
local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, micros)
local text = string.format('%.0f', epoch)
redis.call('SET', KEYS[2], text)
return text
