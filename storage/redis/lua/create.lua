-- KEYS: info, expiry, stream
-- ARGV: id, expires_at ('' = none), enqueue ('1' = the record is already complete: queue
--       its processing in the same atomic step, as commit does), field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
if ARGV[3] == '1' then redis.call('XADD', KEYS[3], '*', 'id', ARGV[1]) end
return 1
