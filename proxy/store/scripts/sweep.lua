-- Account for entries of one shard whose TTL ran out (Redis dropped them on its own).
-- KEYS[1] - shard stats, KEYS[2] - shard index, KEYS[3] - shard expiry set
-- ARGV[1] - shard entry prefix, ARGV[2] - shard selector prefix, ARGV[3] - now (ms),
-- ARGV[4] - at most this many entries, ARGV[5] - the shard's stream -> bytes hash: the
-- audio bytes of coalescing streams gone since (expired, or replaced by a new leader's)
-- leave stream_bytes_held
-- Returns how many entries were accounted for.
local shard = shard_of(ARGV[1], ARGV[2])
local due = redis.call('ZRANGEBYSCORE', shard.exp, '-inf', ARGV[3], 'LIMIT', 0, ARGV[4])
local gone = 0
for _, key in ipairs(due) do
  local ttl = redis.call('PTTL', shard.entries .. key)
  if ttl < 0 then
    redis.call('DEL', shard.entries .. key)
    if forget(shard, key) then
      redis.call('HINCRBY', shard.stats, 'expired', 1)
      gone = gone + 1
    end
  else
    -- written by a replica whose clock runs behind: trust Redis's own TTL
    redis.call('ZADD', shard.exp, tonumber(ARGV[3]) + ttl, key)
  end
end
local held = redis.call('HGETALL', ARGV[5])
for i = 1, #held, 2 do
  if redis.call('EXISTS', held[i]) == 0 then
    redis.call('HINCRBY', shard.stats, 'stream_bytes_held', -tonumber(held[i + 1]))
    redis.call('HDEL', ARGV[5], held[i])
  end
end
return gone
