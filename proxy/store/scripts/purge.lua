-- Delete a batch of one shard's entries that are in every given selector set; with no
-- set, any indexed entries (clearing the cache). Tells the hot tiers.
-- KEYS[1] - shard stats, KEYS[2] - shard index, KEYS[3] - shard expiry set
-- ARGV[1] - shard entry prefix, ARGV[2] - shard selector prefix, ARGV[3] - at most this
-- many entries, ARGV[4] - invalidation channel, ARGV[5...] - selector sets
-- Returns {entries removed, bytes freed}.
local shard = shard_of(ARGV[1], ARGV[2])
local keys
if #ARGV > 4 then
  keys = redis.call('SINTER', unpack(ARGV, 5))
else
  keys = redis.call('HKEYS', shard.idx)
end
local removed, freed, limit, gone = 0, 0, tonumber(ARGV[3]), {}
for _, key in ipairs(keys) do
  if removed >= limit then break end
  local size = remove(shard, key, 'purged')
  if size >= 0 then removed = removed + 1; freed = freed + size; table.insert(gone, key) end
end
if removed > 0 then
  redis.call('PUBLISH', ARGV[4], #ARGV > 4 and table.concat(gone, ' ') or '*')
end
return {removed, freed}
