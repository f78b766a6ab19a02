-- Append one record to a cross-replica fill's stream, only while holding its lock
-- (fencing: a leader that lost the lock cannot mix its bytes into a successor's answer).
-- KEYS[1] - the flight's lock, KEYS[2] - its stream, KEYS[3] - the shard's stats,
-- KEYS[4] - the flight's follower count
-- ARGV[1] - the leader's token, ARGV[2] - the stream's TTL (ms), ARGV[3] - audio bytes in
-- the record (counted as stream_bytes), ARGV[4] - 1: skip the record while no replica
-- follows, ARGV[5...] - the record's fields and values
-- Returns 1 if written, 0 if the lock was lost, 2 if skipped (no follower).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' and tonumber(redis.call('GET', KEYS[4]) or '0') < 1 then return 2 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[3], 'stream_bytes', ARGV[3]) end
return 1
