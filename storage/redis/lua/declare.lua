-- creation-defer-length: set the size once; completes when the offset is already there.
-- KEYS: info, epoch, stream, expiry   ARGV: epoch, size, now, id
local h = redis.call('HMGET', KEYS[1], 'offset', 'size', 'state', 'partial')
if not h[1] then return {-404} end
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[1] then return {-409, current} end
if h[2] ~= '' and h[2] ~= ARGV[2] then return {-400, 'length already declared'} end
if tonumber(ARGV[2]) < tonumber(h[1]) then return {-400, 'length below offset'} end
redis.call('HSET', KEYS[1], 'size', ARGV[2], 'updated_at', ARGV[3])
if h[3] == 'uploading' and h[1] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'state', 'completed', 'expires_at', '', 'completed_at', ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[4])
  if h[4] ~= '1' then redis.call('XADD', KEYS[3], '*', 'id', ARGV[4]) end
  return {2}
end
return {1}
