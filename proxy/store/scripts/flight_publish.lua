-- Append one record to a cross-replica fill's stream, only while holding its lock
-- (fencing: a leader that lost the lock cannot mix its bytes into a successor's answer).
-- KEYS[1] - the flight's lock, KEYS[2] - its stream, KEYS[3] - the shard's stats,
-- KEYS[4] - the flight's follower count, KEYS[5] - the shard's stream -> bytes hash
-- ARGV[1] - the leader's token, ARGV[2] - the stream's TTL (ms), ARGV[3] - audio bytes in
-- the record (counted as stream_bytes, lifetime, and stream_bytes_held, until the stream
-- is gone), ARGV[4] - 1: skip the record while no replica follows, ARGV[5...] - the
-- record's fields and values
-- Returns 1 if written, 0 if the lock was lost, 2 if skipped (no follower).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' and tonumber(redis.call('GET', KEYS[4]) or '0') < 1 then return 2 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  -- A new stream: what an earlier one under this name held is gone (expired or deleted).
  local old = tonumber(redis.call('HGET', KEYS[5], KEYS[2]) or '0')
  if old ~= 0 then
    redis.call('HINCRBY', KEYS[3], 'stream_bytes_held', -old)
    redis.call('HDEL', KEYS[5], KEYS[2])
  end
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local bytes = tonumber(ARGV[3])
if bytes > 0 then
  redis.call('HINCRBY', KEYS[3], 'stream_bytes', bytes)
  redis.call('HINCRBY', KEYS[3], 'stream_bytes_held', bytes)
  redis.call('HINCRBY', KEYS[5], KEYS[2], bytes)
end
return 1
