-- Store one entry, replacing any earlier one under the same key, with its bookkeeping.
-- KEYS[1] - shard stats, KEYS[2] - shard index, KEYS[3] - shard expiry set, KEYS[4] - entry
-- ARGV[1] - shard selector prefix, ARGV[2] - cache key, ARGV[3] - the entry's TTL (ms),
-- ARGV[4] - when Redis drops it (ms), ARGV[5] - index record, ARGV[6] - invalidation
-- channel, ARGV[7...] - the entry's hash fields and values (proxy/store/schema.py)
-- Returns the shard's stored bytes.
local shard, key = shard_of(nil, ARGV[1]), ARGV[2]  -- the entry itself is KEYS[4]
local old = forget(shard, key)
if old then redis.call('HINCRBY', shard.stats, 'overwritten', 1) end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('HSET', shard.idx, key, ARGV[5])
redis.call('ZADD', shard.exp, ARGV[4], key)
local rec = cjson.decode(ARGV[5])
adjust(shard.stats, rec, 1)
for _, s in ipairs(selectors(shard, rec)) do redis.call('SADD', s, key) end
-- Hot tiers holding the audio this replaces drop it, in the same atomic step.
redis.call('PUBLISH', ARGV[6], key)
return redis.call('HGET', shard.stats, 'bytes')
