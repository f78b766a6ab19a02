-- Renew a cross-replica fill's lock and stream while its leader works.
-- KEYS[1] - the flight's lock, KEYS[2] - its stream, KEYS[3] - its follower count
-- ARGV[1] - the leader's token, ARGV[2] - the lock's TTL (ms), ARGV[3] - the stream's (ms)
-- Returns how many replicas follow, or -1 if the lock was lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return tonumber(redis.call('GET', KEYS[3]) or '0')
