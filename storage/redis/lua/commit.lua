-- Fenced compare-and-set of the offset; completion and its job in the same atomic step.
-- KEYS: info, epoch, stream, expiry   ARGV: epoch, expected, new, now, expires_at, id
local h = redis.call('HMGET', KEYS[1], 'offset', 'size', 'state', 'partial')
if not h[1] then return {-404} end
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[1] then return {-409, current} end        -- a newer holder: fenced
if h[3] ~= 'uploading' then return {-410, h[3]} end
if h[1] ~= ARGV[2] then return {-412, h[1]} end              -- offset CAS
local new = tonumber(ARGV[3])
local size = tonumber(h[2])
if size and new > size then return {-413} end
redis.call('HSET', KEYS[1], 'offset', ARGV[3], 'updated_at', ARGV[4], 'epoch', ARGV[1])
if size and new == size then
  redis.call('HSET', KEYS[1], 'state', 'completed', 'expires_at', '', 'completed_at', ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[6])
  if h[4] ~= '1' then redis.call('XADD', KEYS[3], '*', 'id', ARGV[6]) end
  return {2}
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
end
return {1}
