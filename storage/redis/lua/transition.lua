-- KEYS: info, expiry, epoch   ARGV: id, to, expected (comma list), tombstone_ms, field, value, ...
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-404} end
if not string.find(',' .. ARGV[3] .. ',', ',' .. state .. ',', 1, true) then
  return {-1, state}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if ARGV[2] ~= 'uploading' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[2] == 'terminated' or ARGV[2] == 'expired' then
  -- Tombstones answer 410 for a while, then Redis forgets them by itself.
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return {1}
