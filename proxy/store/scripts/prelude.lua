-- Helpers shared by the scripts that change which entries exist (put, remove, sweep,
-- purge, repair): they keep the index, the selector sets and the counters in step.
-- Redis cannot require a file, so proxy/store/lua.py runs this file's text before each of
-- those scripts, and maps a Redis error's line number back to this file or the script.
--
-- KEYS[1] - the shard's stats, KEYS[2] - its index, KEYS[3] - its expiry set, in every
-- script that uses these helpers. A record is an index record (proxy/store/schema.py):
-- s stored bytes, o original bytes, z codec (0: none), c class, t tenant, v voice,
-- m model, r route, cr created (ms).

-- The shard a script works on. Entry and selector keys are the prefixes given
-- (proxy/store/keyspace.py) followed by a cache key, or by '<dimension>:<value>'.
local function shard_of(entries, sel)
  return {stats = KEYS[1], idx = KEYS[2], exp = KEYS[3], entries = entries, sel = sel}
end

local function adjust(stats, rec, sign)
  redis.call('HINCRBY', stats, 'entries', sign)
  redis.call('HINCRBY', stats, 'bytes', sign * rec.s)
  redis.call('HINCRBY', stats, 'original_bytes', sign * rec.o)
  if rec.z ~= 0 then
    redis.call('HINCRBY', stats, 'compressed_entries', sign)
    redis.call('HINCRBY', stats, 'compressed_bytes', sign * rec.s)
    redis.call('HINCRBY', stats, 'compressed_original_bytes', sign * rec.o)
  end
  redis.call('HINCRBY', stats, 'class:' .. rec.c .. ':entries', sign)
  redis.call('HINCRBY', stats, 'class:' .. rec.c .. ':bytes', sign * rec.s)
  if rec.t ~= '' then
    redis.call('HINCRBY', stats, 'tenant:' .. rec.t .. ':entries', sign)
    redis.call('HINCRBY', stats, 'tenant:' .. rec.t .. ':bytes', sign * rec.s)
  end
end

-- The selector sets an entry with this record belongs to.
local function selectors(shard, rec)
  local out = {}
  local dims = {voice = rec.v, model = rec.m, tenant = rec.t, class = rec.c, route = rec.r}
  for dim, value in pairs(dims) do
    if value ~= nil and value ~= '' then
      table.insert(out, shard.sel .. dim .. ':' .. value)
    end
  end
  return out
end

-- Undo an entry's bookkeeping (not the entry itself); its record, or nil if unindexed.
local function forget(shard, key)
  local raw = redis.call('HGET', shard.idx, key)
  redis.call('ZREM', shard.exp, key)
  if not raw then return nil end
  local rec = cjson.decode(raw)
  adjust(shard.stats, rec, -1)
  for _, s in ipairs(selectors(shard, rec)) do redis.call('SREM', s, key) end
  redis.call('HDEL', shard.idx, key)
  return rec
end

-- Delete an entry with its bookkeeping, counting why: its stored bytes, 0 if it was
-- there unindexed, -1 if it was not there at all.
local function remove(shard, key, reason)
  local existed = redis.call('DEL', shard.entries .. key)
  local rec = forget(shard, key)
  if rec then
    redis.call('HINCRBY', shard.stats, reason, 1)
    return rec.s
  end
  if existed == 1 then return 0 end
  return -1
end
