-- Delete entries of one shard with their bookkeeping, and tell the hot tiers.
-- KEYS[1] - shard stats, KEYS[2] - shard index, KEYS[3] - shard expiry set
-- ARGV[1] - shard entry prefix, ARGV[2] - shard selector prefix, ARGV[3] - reason (the
-- counter to add to), ARGV[4] - invalidation channel, ARGV[5...] - cache keys
-- Returns {entries removed, bytes freed}.
local shard = shard_of(ARGV[1], ARGV[2])
local removed, freed, gone = 0, 0, {}
for i = 5, #ARGV do
  local size = remove(shard, ARGV[i], ARGV[3])
  if size >= 0 then removed = removed + 1; freed = freed + size; table.insert(gone, ARGV[i]) end
end
if removed > 0 then redis.call('PUBLISH', ARGV[4], table.concat(gone, ' ')) end
return {removed, freed}
