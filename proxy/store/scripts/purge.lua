-- Delete a batch of one shard's entries that are in every given selector set, or whose
-- index record matches them all; with no set, any indexed entries (clearing the cache).
-- Tells the hot tiers.
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
local function take(key)
  local size = remove(shard, key, 'purged')
  if size >= 0 then removed = removed + 1; freed = freed + size; table.insert(gone, key) end
end
for _, key in ipairs(keys) do
  if removed >= limit then break end
  take(key)
end
-- A selector set can be lost (Redis evicting under an allkeys-* policy, or a hand-made
-- DEL) while its entries live on: the index records say what each entry is, so once the
-- sets are done, the records are matched too.
if #ARGV > 4 and removed < limit then
  local fields = {voice = 'v', model = 'm', tenant = 't', class = 'c', route = 'r'}
  local want = {}
  for i = 5, #ARGV do
    local dim, value = string.match(string.sub(ARGV[i], #ARGV[2] + 1), '^([^:]+):(.*)$')
    want[fields[dim]] = value
  end
  local all = redis.call('HGETALL', shard.idx)
  for i = 1, #all, 2 do
    if removed >= limit then break end
    local rec, match = cjson.decode(all[i + 1]), true
    for f, value in pairs(want) do
      if tostring(rec[f] or '') ~= value then match = false; break end
    end
    if match then take(all[i]) end
  end
end
if removed > 0 then
  redis.call('PUBLISH', ARGV[4], #ARGV > 4 and table.concat(gone, ' ') or '*')
end
return {removed, freed}
