-- KEYS: stream, dead stream   ARGV: group, entry id, upload id, error, now_ms
redis.call('XADD', KEYS[2], '*', 'id', ARGV[3], 'error', ARGV[4], 'at', ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
