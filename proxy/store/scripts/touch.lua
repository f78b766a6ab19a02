-- Write one shard's batched hit counts, last-access times and misses.
-- KEYS[1] - shard stats
-- ARGV[1] - shard entry prefix, ARGV[2] - now (ms), ARGV[3] - misses,
-- ARGV[4...] - cache key, hits, cache key, hits...
-- Returns the hits written (entries gone meanwhile are skipped).
-- Entry fields (proxy/store/schema.py): n hits, la last access, cls class, tn tenant.
local entries, now = ARGV[1], ARGV[2]
local hits = 0
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[1], 'misses', ARGV[3]) end
for i = 4, #ARGV, 2 do
  local entry = entries .. ARGV[i]
  local meta = redis.call('HMGET', entry, 'cls', 'tn')
  local cls, tn = meta[1], meta[2]
  if cls then
    redis.call('HINCRBY', entry, 'n', ARGV[i + 1])
    redis.call('HSET', entry, 'la', now)
    redis.call('HINCRBY', KEYS[1], 'class:' .. cls .. ':hits', ARGV[i + 1])
    if tn and tn ~= '' then
      redis.call('HINCRBY', KEYS[1], 'tenant:' .. tn .. ':hits', ARGV[i + 1])
    end
    hits = hits + tonumber(ARGV[i + 1])
  end
end
if hits > 0 then redis.call('HINCRBY', KEYS[1], 'hits', hits) end
return hits
