-- Recompute one shard's level counters from the entries that really exist, dropping
-- index records whose entry is gone ("ghosts").
-- KEYS[1] - shard stats, KEYS[2] - shard index, KEYS[3] - shard expiry set
-- ARGV[1] - shard entry prefix, ARGV[2] - shard selector prefix, ARGV[3] - optional: the
-- removal counter ghosts are counted under (ghosts past their expiry count as 'expired'),
-- ARGV[4] - now (ms), with ARGV[3]
-- Returns {ghosts removed, JSON {before = counters, after = counters}}.
local shard = shard_of(ARGV[1], ARGV[2])
local ghosts = 0
local all = redis.call('HGETALL', shard.idx)
local truth = {}
local function add(name, n) truth[name] = (truth[name] or 0) + n end
for i = 1, #all, 2 do
  local key, rec = all[i], cjson.decode(all[i + 1])
  if redis.call('EXISTS', shard.entries .. key) == 0 then
    if ARGV[3] then
      local due = redis.call('ZSCORE', shard.exp, key)
      local why = ARGV[3]
      if due and tonumber(due) <= tonumber(ARGV[4]) then why = 'expired' end
      redis.call('HINCRBY', shard.stats, why, 1)
    end
    for _, s in ipairs(selectors(shard, rec)) do redis.call('SREM', s, key) end
    redis.call('HDEL', shard.idx, key)
    redis.call('ZREM', shard.exp, key)
    ghosts = ghosts + 1
  else
    add('entries', 1); add('bytes', rec.s); add('original_bytes', rec.o)
    if rec.z ~= 0 then
      add('compressed_entries', 1); add('compressed_bytes', rec.s)
      add('compressed_original_bytes', rec.o)
    end
    add('class:' .. rec.c .. ':entries', 1); add('class:' .. rec.c .. ':bytes', rec.s)
    if rec.t ~= '' then
      add('tenant:' .. rec.t .. ':entries', 1); add('tenant:' .. rec.t .. ':bytes', rec.s)
    end
  end
end
local before = {}
local current = redis.call('HGETALL', shard.stats)
for i = 1, #current, 2 do
  local name = current[i]
  if name == 'entries' or name == 'bytes' or name == 'original_bytes'
     or string.sub(name, 1, 11) == 'compressed_'
     or (string.sub(name, 1, 6) == 'class:' and string.sub(name, -5) ~= ':hits')
     or (string.sub(name, 1, 7) == 'tenant:' and string.sub(name, -5) ~= ':hits') then
    before[name] = tonumber(current[i + 1])
    redis.call('HDEL', shard.stats, name)
  end
end
for name, n in pairs(truth) do
  if n ~= 0 then redis.call('HSET', shard.stats, name, n) end
end
return {ghosts, cjson.encode({before = before, after = truth})}
